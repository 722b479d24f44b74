"""hf_attn: decoder-only language models with pluggable attention, native to transformers."""
