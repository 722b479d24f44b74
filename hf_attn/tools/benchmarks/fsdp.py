"""Memory per process of FSDP2 on CPU: one process against two, at the `small` and `gpt2-124m` presets.

Each run is `torchrun --nproc_per_node N` of this module's worker (`--worker-out`): every process
builds the preset's model from the same seed, shards it with `hf_attn.train.sharding.shard_model`
(the function `hf-attn-train --fsdp` calls; one process trains it unsharded), and takes a few AdamW
steps on random tokens, the global batch split over the processes. It reports per process:

    parameter_bytes, optimizer_bytes   sum over its local shards of numel * element size
    peak_rss_bytes                     the process's max resident set (getrusage)
    baseline_rss_bytes                 its resident set before the model was built (imports, gloo)

The peak includes the full model every process builds before sharding it (no meta-device init).
`scripts/bench_fsdp.py` is the command line; docs/training.md holds its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...utils import format_table, peak_rss_bytes
from .memory import PeakRSS, return_freed_memory
from .timing import write_json

MiB = 2**20


@dataclass
class FsdpBenchOptions:
    presets: list[str] = field(default_factory=lambda: ["small", "gpt2-124m"], metadata={"help": "model sizes"})
    processes: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "process counts to compare"})
    attention_type: str = field(default="mha", metadata={"help": "the attention design"})
    steps: int = field(default=3, metadata={"help": "AdamW steps per run"})
    batch_size: int = field(default=4, metadata={"help": "global batch (sequences), split over the processes"})
    block_size: int = field(default=128, metadata={"help": "tokens per sequence"})
    json: str | None = field(default=None, metadata={"help": "write the results here"})
    worker_out: str | None = field(
        default=None, metadata={"help": "internal: run as one process of a launch and write its numbers here"}
    )


def worker(options: FsdpBenchOptions, preset: str) -> None:
    """One process of a launch: build, shard (with 2+ processes), train `steps`; rank 0 writes every rank's numbers."""
    from accelerate import Accelerator

    from ...model.configuration_hf_attn import HfAttnConfig
    from ...model.modeling_hf_attn import HfAttnForCausalLM
    from ...train.sharding import local_bytes, shard_model

    return_freed_memory()  # freed tensors leave the resident set (the full model once it is sharded)
    accelerator = Accelerator(cpu=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    baseline = PeakRSS.rss()
    torch.manual_seed(0)
    model = HfAttnForCausalLM(HfAttnConfig.from_preset(preset, attention_type=options.attention_type))
    if world > 1:
        model = shard_model(model, world, "no")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    per_process = options.batch_size // world
    start = time.perf_counter()
    for _ in range(options.steps):
        ids = torch.randint(0, model.config.vocab_size, (options.batch_size, options.block_size), generator=generator)
        ids = ids[rank * per_process : (rank + 1) * per_process]  # this process's part of the global batch
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    held = local_bytes(model, optimizer)
    peak = peak_rss_bytes()
    mine = torch.tensor([held["parameter_bytes"], held["optimizer_bytes"], peak, baseline], dtype=torch.float64)
    every = accelerator.gather(mine.reshape(1, -1)).reshape(world, -1).tolist()
    if accelerator.is_main_process:
        keys = ("parameter_bytes", "optimizer_bytes", "peak_rss_bytes", "baseline_rss_bytes")
        ranks = [{k: int(v) for k, v in zip(keys, row)} for row in every]
        record = {"preset": preset, "processes": world, "seconds_per_step": seconds / options.steps, "ranks": ranks}
        with open(options.worker_out, "w") as f:
            json.dump(record, f)
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def launch(options: FsdpBenchOptions, preset: str, processes: int, out: str) -> dict:
    """One `torchrun` of the worker; its record."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    cmd += [str(Path(__file__).resolve().parents[3] / "scripts" / "bench_fsdp.py")]  # the repository's
    cmd += ["--presets", preset, "--attention-type", options.attention_type, "--steps", str(options.steps)]
    cmd += ["--batch-size", str(options.batch_size), "--block-size", str(options.block_size), "--worker-out", out]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{preset}, {processes} processes failed:\n{proc.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def rows(results: list[dict]) -> list[list]:
    """Per run: the largest process's numbers (MiB) and their ratio to the 1-process run of the preset."""
    one = {r["preset"]: r for r in results if r["processes"] == 1}
    table = []
    for r in results:
        top = max(r["ranks"], key=lambda x: x["parameter_bytes"] + x["optimizer_bytes"])
        held = top["parameter_bytes"] + top["optimizer_bytes"]
        base = one.get(r["preset"])
        base_held = base and max(x["parameter_bytes"] + x["optimizer_bytes"] for x in base["ranks"])
        base_peak = base and max(x["peak_rss_bytes"] - x["baseline_rss_bytes"] for x in base["ranks"])
        above = top["peak_rss_bytes"] - top["baseline_rss_bytes"]
        table.append([
            r["preset"], r["processes"], top["parameter_bytes"] / MiB, top["optimizer_bytes"] / MiB, held / MiB,
            held / base_held if base else None, top["peak_rss_bytes"] / MiB, above / MiB,
            above / base_peak if base else None, r["seconds_per_step"],
        ])  # fmt: skip
    return table


HEADERS = ["preset", "procs", "params MiB", "AdamW MiB", "params+AdamW MiB", "vs 1 proc", "peak RSS MiB",
           "peak above baseline MiB", "vs 1 proc", "s/step"]  # fmt: skip


def run_fsdp_benchmark(options: FsdpBenchOptions) -> list[dict]:
    """Every preset at every process count; prints the table, writes `json`; returns the records."""
    import tempfile

    if options.worker_out is not None:  # one process of a launch
        worker(options, options.presets[0])
        return []
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_fsdp_") as work:
        for preset in options.presets:
            for n in options.processes:
                results.append(launch(options, preset, n, os.path.join(work, f"{preset}-{n}.json")))
                print(f"{preset}, {n} processes: done", flush=True)
    print(format_table(HEADERS, rows(results)))
    if options.json:
        write_json(options.json, options, results)
    return results
