"""Same as `hf-attn-train-tokenizer`: see `hf_attn/cli/train_tokenizer.py` or run with --help."""

from hf_attn.cli.train_tokenizer import main

if __name__ == "__main__":
    main()
