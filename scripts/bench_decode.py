"""Decode at serving scale on CPU: every attention design, batches, cache implementations, compiled steps.

    python scripts/bench_decode.py --json docs/bench/bench_decode.json   # the full run, ~8 min on 2 cores
    python scripts/bench_decode.py --compile-cells none                   # without the compiled path
    python scripts/bench_decode.py --contexts 512 --batches 1 4 --steps 4 --repeats 1 --compile-cells none  # a look

The models, the paths and the goals are described in `hf_attn/tools/benchmarks/serving.py`.
"""

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.serving import DecodeBenchOptions, run_decode_benchmark


@command
def main(argv=None) -> None:
    (options,) = parse([DecodeBenchOptions], argv, description=__doc__)
    run_decode_benchmark(options)


if __name__ == "__main__":
    main()
