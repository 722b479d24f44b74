"""Train every attention design on the same budget and write report.md, results.json and plots.

    hf-attn-compare                       # default: six designs, 512-token blocks, about 20 minutes on 2 CPU cores
    hf-attn-compare --seeds 0,1,2 --output-dir runs/compare-seeds    # every design once per seed
    hf-attn-compare --sweep --output-dir runs/sweep     # a range of cache sizes per design, Pareto frontier
    hf-attn-compare --merge runs/seed-0 runs/seed-1 --output-dir runs/seeds   # seeds run on two machines
    hf-attn-compare --quick --output-dir runs/quick      # seconds, for tests
    hf-attn-compare --variants mha mla mla-q --max-tokens 2000000 --text-files my/*.txt

Every training option of hf-attn-train applies to all variants alike; the defaults shown are the
comparison's budget. Exits with status 1 if a variant failed (the others are still reported).
"""

from __future__ import annotations

import sys

from ..tools.comparison.compare import (
    DEFAULTS,
    QUICK,
    CompareArgs,
    CompareOptions,
    comparison_table,
    merge_comparisons,
    parse_seeds,
    run_comparison,
)
from ..train.data import CorpusSpec
from ..train.options import ModelOptions, TrainArgs, TrainOptions
from .base import command, parse

OPTION_CLASSES = [CompareOptions, ModelOptions, CorpusSpec, TrainOptions]


def parse_compare_args(argv: list[str]) -> CompareArgs:
    """The comparison's options; with --quick its seconds-long settings replace the defaults, and flags
    given explicitly still win. --seeds replaces --seed."""
    compare, *_ = parse(OPTION_CLASSES, argv, description=__doc__, defaults=DEFAULTS)
    defaults = {**DEFAULTS, **QUICK} if compare.quick else DEFAULTS
    compare, model, corpus, options = parse(OPTION_CLASSES, argv, description=__doc__, defaults=defaults)
    return CompareArgs(
        train=TrainArgs.from_parts(options, model, corpus),
        variants=tuple(compare.variants),
        seeds=parse_seeds(compare.seeds) if compare.seeds is not None else (options.seed,),
        sweep=compare.sweep,
        decode_context=compare.decode_context,
        decode_steps=compare.decode_steps,
        probe_blocks=compare.probe_blocks,
        mqar_results=compare.mqar_results,
        command=" ".join(["hf-attn-compare", *argv]).strip(),
    )


def merge_folders(argv: list[str]) -> list[str] | None:
    """The --merge folders, if given."""
    compare, *_ = parse(OPTION_CLASSES, argv, description=__doc__, defaults=DEFAULTS)
    return compare.merge


@command
def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_compare_args(argv)
    folders = merge_folders(argv)
    if folders:
        results = merge_comparisons(folders, args.output_dir, args.train.overwrite)
    else:
        results = run_comparison(args)
    print(comparison_table(results))
    print(f"\nreport: {args.output_dir}/report.md")
    if any(r["status"] != "ok" for r in results["runs"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
