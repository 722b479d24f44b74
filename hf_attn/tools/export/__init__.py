"""Exporting models to transformers' own classes (Llama, DeepseekV3, Mistral) and to GGUF for llama.cpp."""
