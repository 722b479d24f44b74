"""Evaluate a saved model (same as `hf-attn-evaluate`; see hf_attn/cli/evaluate.py)."""

import os
import sys

# Python puts this folder first on sys.path, and this file's name would then shadow the `evaluate`
# library that the evaluation imports: take the folder out before importing anything.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

from hf_attn.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    main()
