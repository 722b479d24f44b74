"""Benchmarks: training and decode speed against transformers' classes, cache capacity, a plain PyTorch decoder."""
