"""Evaluate a saved model (same as `hf-attn-evaluate`; see hf_attn/cli/evaluate.py)."""

from hf_attn.cli.evaluate import main

if __name__ == "__main__":
    main()
