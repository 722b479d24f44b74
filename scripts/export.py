"""Same as `hf-attn-export`: see `hf_attn/cli/export.py` or run with --help."""

from hf_attn.cli.export import main

if __name__ == "__main__":
    main()
