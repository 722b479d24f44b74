"""Memory per process of FSDP2 on CPU (gloo): one process against two, at the small and gpt2-124m presets.

    python scripts/bench_fsdp.py                                   # both presets, 1 and 2 processes
    python scripts/bench_fsdp.py --presets small --json docs/bench/bench_fsdp.json

What each run measures is described in `hf_attn/tools/benchmarks/fsdp.py`.
"""

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.fsdp import FsdpBenchOptions, run_fsdp_benchmark


@command
def main(argv=None) -> None:
    (options,) = parse([FsdpBenchOptions], argv, description=__doc__)
    run_fsdp_benchmark(options)


if __name__ == "__main__":
    main()
