"""Same as `hf-attn-compare`: see `hf_attn/cli/compare.py` or run with --help."""

from hf_attn.cli.compare import main

if __name__ == "__main__":
    main()
