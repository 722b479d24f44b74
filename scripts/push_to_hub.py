"""Same as `hf-attn-push-to-hub`: see `hf_attn/cli/push_to_hub.py` or run with --help."""

from hf_attn.cli.push_to_hub import main

if __name__ == "__main__":
    main()
