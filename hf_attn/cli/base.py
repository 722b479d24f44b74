"""What every command line shares: options parsed from dataclasses, and one clear line for bad input."""

from __future__ import annotations

import argparse
import functools
import sys
import typing
from collections.abc import Callable, Sequence

from transformers import HfArgumentParser

from ..utils import HfAttnError

# Errors the project raises on purpose, each with a message that names the file, field or flag.
# They end a command with `error: MESSAGE` and exit status 2; anything else keeps its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (HfAttnError, ValueError, OSError)


def parse(
    option_classes: Sequence[type],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    positional: str | None = None,
    defaults: dict | None = None,
) -> tuple:
    """One instance per dataclass in `option_classes`, from `argv` (default: sys.argv[1:]).

    Flags are the field names, with dashes or underscores (`--block-size` = `--block_size`); the
    help text is each field's `metadata["help"]`. `positional` names a field that may also be given
    without its flag (`hf-attn-evaluate RUN_DIR`). `defaults` replaces field defaults for this
    command only (the comparison job's budget, for example).
    """
    parser = HfArgumentParser(option_classes, description=description, formatter_class=_HelpFormatter)
    if positional is not None:
        many = any(
            positional in hints and "list" in str(hints[positional])
            for hints in map(typing.get_type_hints, option_classes)
        )
        parser.add_argument(
            positional,
            nargs="*" if many else "?",
            default=argparse.SUPPRESS,
            help=f"same as --{positional.replace('_', '-')}",
        )
    if defaults:
        parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring's examples as written, and every option's default after its help."""


def command(main: Callable[[Sequence[str] | None], object]) -> Callable[[Sequence[str] | None], None]:
    """Wrap a command's `main(argv)`: an expected error becomes `error: ...` on stderr and exit status 2.

    The wrapped command returns None: the console script runs `sys.exit(main())`, which prints any other
    value to stderr and exits with status 1. A command reports its result on stdout, and a failure after
    its work (hf-attn-compare's failed variant) with its own `sys.exit(1)`.
    """

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> None:
        try:
            main(argv)
        except EXPECTED_ERRORS as error:
            print(f"error: {_message(error)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return run


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__
