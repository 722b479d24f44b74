"""The command lines, one module per command, each with `main(argv=None)`.

`pyproject.toml` installs them as `hf-attn-train`, `hf-attn-compare`, ...; the files in `scripts/`
call the same functions. Every option is a field of a dataclass with its help text, and the
command line is built from those dataclasses by transformers' `HfArgumentParser` (`base.parse`).
"""
