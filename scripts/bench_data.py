"""Benchmark tokenizing and packing, and the tokenizer's characters per token.

    python scripts/bench_data.py --extra-text /path/to/tinyshakespeare.txt

What is timed is described in `hf_attn/tools/benchmarks/data.py`.
"""

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.data import DataBenchOptions, run_data_benchmark


@command
def main(argv=None) -> None:
    (options,) = parse([DataBenchOptions], argv, description=__doc__)
    run_data_benchmark(options)


if __name__ == "__main__":
    main()
