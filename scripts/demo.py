"""Same as `hf-attn-demo`: see `hf_attn/cli/demo.py` or run with --help."""

from hf_attn.cli.demo import main

if __name__ == "__main__":
    main()
