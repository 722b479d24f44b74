"""Train MHA, GQA, MQA and MLA on the same budget and write report.md, results.json and plots.

    python scripts/compare.py                       # the default run: about 10 minutes on 2 CPU cores
    python scripts/compare.py --quick --output-dir runs/quick      # seconds, for tests
    python scripts/compare.py --variants mha mla mla-q --max-tokens 2000000 --text-files my/*.txt
"""

import argparse
import sys

from hf_attn.compare import add_compare_args, compare_args_from_namespace, comparison_table, run_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_args(parser)
    argv = sys.argv[1:]
    args = compare_args_from_namespace(parser.parse_args(argv), argv)
    results = run_comparison(args)
    print(comparison_table(results))
    print(f"\nreport: {args.output_dir}/report.md")
    if any(r["status"] != "ok" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
