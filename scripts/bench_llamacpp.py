"""Decode speed and KV memory in llama.cpp against transformers, for the same MHA and MLA models.

    python scripts/bench_llamacpp.py                              # writes docs/llamacpp/bench.{json,txt,md}
    python scripts/bench_llamacpp.py --contexts 256 --repeats 1   # a quick look

The models, engines and measurements are described in `hf_attn/tools/benchmarks/llamacpp.py`.
"""

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.llamacpp import LlamaCppBenchOptions, run_llamacpp_benchmark


@command
def main(argv=None) -> None:
    (options,) = parse([LlamaCppBenchOptions], argv, description=__doc__)
    run_llamacpp_benchmark(options)


if __name__ == "__main__":
    main()
