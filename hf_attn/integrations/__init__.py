"""hf_attn with the tools people already use: PEFT LoRA targets, lm-evaluation-harness tasks, `evaluate` metrics.

    lora.py       default LoRA `target_modules` per attention type
    harness/      lm-evaluation-harness task definitions (rolling perplexity on local text, offline)
    metrics/      an `evaluate` metric module for perplexity and bits per character / byte

Nothing in `hf_attn.model` imports these: a saved checkpoint needs none of them.
"""
