"""Time one training step of hf_attn MHA against the same math without the framework, Llama and nanoGPT.

    python scripts/bench_train.py                          # sizes a and b, eager mode
    python scripts/bench_train.py --sizes a --compile      # also torch.compile every model
    python scripts/bench_train.py --sizes a --profile      # top ops by self CPU time, hf_attn and plain
    python scripts/bench_train.py --json docs/bench/bench_train.json

The models, the step and the ratios are described in `hf_attn/tools/benchmarks/training.py`.
"""

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.training import TrainBenchOptions, run_train_benchmark


@command
def main(argv=None) -> None:
    (options,) = parse([TrainBenchOptions], argv, description=__doc__)
    run_train_benchmark(options)


if __name__ == "__main__":
    main()
