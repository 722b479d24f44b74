"""Same as `hf-attn-train`: see `hf_attn/cli/train.py` or run with --help."""

from hf_attn.cli.train import main

if __name__ == "__main__":
    main()
