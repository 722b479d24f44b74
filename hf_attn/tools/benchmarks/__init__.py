"""Benchmarks: training and decode speed (CPU, GPU, llama.cpp), cache capacity, data packing, a bare decoder."""
