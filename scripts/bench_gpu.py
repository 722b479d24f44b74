"""GPU benchmark in one short run: bf16 training throughput and MFU, batched decode at 8192 tokens, FSDP.

    python scripts/bench_gpu.py --out docs/bench/gpu.md          # writes gpu.md and gpu.json
    python scripts/bench_gpu.py --smoke --out /tmp/gpu_smoke.md  # every part on CPU, tiny, < 1 minute

The parts, their budgets and the FLOPs formula are described in `hf_attn/tools/benchmarks/gpu.py`.
"""

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.gpu import GpuBenchOptions, run_gpu_benchmark


@command
def main(argv=None) -> None:
    (options,) = parse([GpuBenchOptions], argv, description=__doc__)
    run_gpu_benchmark(options)


if __name__ == "__main__":
    main()
