"""Train every attention design from scratch on multi-query associative recall (MQAR) and report its accuracy.

    hf-attn-mqar                                   # the default benchmark: six designs, three seeds
    hf-attn-mqar --variants mha swa --pairs 4 8 16 32 --lengths 64 256 --window 64
    hf-attn-mqar --quick --output-dir runs/mqar-quick   # seconds, for tests

Writes results.json, report.md, accuracy.png and learning_curves.png to --output-dir. Exits with status 1
if a run failed (the others are still reported). See hf_attn/tools/comparison/mqar.py for the task.
"""

from __future__ import annotations

import sys

from ..tools.comparison.mqar_bench import QUICK, MqarArgs, run_mqar
from ..tools.comparison.mqar_report import accuracy_table
from .base import command, parse


def parse_mqar_args(argv: list[str]) -> MqarArgs:
    """The benchmark's options; with --quick its seconds-long settings replace the defaults, and flags given
    explicitly still win."""
    (args,) = parse([MqarArgs], argv, description=__doc__)
    if args.quick:
        (args,) = parse([MqarArgs], argv, description=__doc__, defaults=QUICK)
    args.command = " ".join(["hf-attn-mqar", *argv]).strip()
    return args


@command
def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_mqar_args(argv)
    results = run_mqar(args)
    print(accuracy_table(results["summary"]))
    print(f"\nreport: {args.output_dir}/report.md")
    if any(r["status"] != "ok" for r in results["runs"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
