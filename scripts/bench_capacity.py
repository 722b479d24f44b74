"""Cache capacity: how many sequences of `--seq-len` tokens each design's cache holds in a memory budget.

    python scripts/bench_capacity.py --plot docs/bench/capacity.png --json docs/bench/capacity.json

What is measured and checked is described in `hf_attn/tools/benchmarks/capacity.py`.
"""

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.capacity import CapacityOptions, run_capacity_benchmark


@command
def main(argv=None) -> None:
    (options,) = parse([CapacityOptions], argv, description=__doc__)
    run_capacity_benchmark(options)


if __name__ == "__main__":
    main()
