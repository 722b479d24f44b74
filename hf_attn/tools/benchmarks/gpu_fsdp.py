"""The GPU benchmark's FSDP part: the training command line under `accelerate launch --use_fsdp`.

One process: FSDP wrapping of the decoder layers, sharded checkpoints, a resume from the last one in a
second launch, and the final save loaded back with `from_pretrained`. Without an accelerator (the smoke
run) the same command runs without FSDP, and the report says so.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .gpu import Guard, Sizes

FSDP_LAUNCH = [
    "--use_fsdp",
    "--num_processes",
    "1",
    "--fsdp_sharding_strategy",
    "FULL_SHARD",
    "--fsdp_auto_wrap_policy",
    "TRANSFORMER_BASED_WRAP",
    "--fsdp_transformer_layer_cls_to_wrap",
    "HfAttnDecoderLayer",
    "--fsdp_state_dict_type",
    "SHARDED_STATE_DICT",
]


def train_command(
    output_dir: str, corpus: str, preset: str, max_steps: int, save_every: int, fsdp: bool, resume: bool
) -> list[str]:
    """The training CLI, under `accelerate launch --use_fsdp` (one process) when `fsdp`, else plain python.

    One function builds both, so the smoke run (no FSDP) checks the same arguments the GPU run uses.
    """
    launcher = (
        [sys.executable, "-m", "accelerate.commands.launch", *FSDP_LAUNCH, "-m"] if fsdp else [sys.executable, "-m"]
    )
    flags = ["--preset", preset, "--text-files", corpus, "--train-tokenizer-vocab", "512", "--block-size", "64"]
    flags += ["--batch-size", "8", "--warmup-steps", "5", "--max-steps", str(max_steps)]
    flags += ["--save-every", str(save_every)]
    flags += ["--eval-every", "0", "--eval-batches", "2", "--tracker", "none", "--no-progress", "--sample-tokens", "8"]
    flags += ["--output-dir", output_dir, "--mixed-precision", "bf16" if fsdp else "no"]
    return [*launcher, "hf_attn.cli.train", *flags, *(["--resume"] if resume else [])]


def write_corpus(folder: str) -> str:
    """A text file from the repository's own markdown (no download; the GPU machine has no network)."""
    root = str(Path(__file__).resolve().parents[3])  # hf_attn/tools/benchmarks/ -> the repository
    files = sorted(glob.glob(os.path.join(root, "*.md")) + glob.glob(os.path.join(root, "docs", "**", "*.md")))
    path = os.path.join(folder, "corpus.txt")
    with open(path, "w") as f:
        for name in files:
            with open(name, encoding="utf-8") as source:
                f.write(source.read() + "\n\n")
    return path


def run_launch(cmd: list[str], timeout: float) -> dict:
    """Run one training launch; its exit code, seconds and the tail of its stderr."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1), env=env)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as error:
        code, stderr = "timeout", error.stderr or ""
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return {"command": shlex.join(cmd), "returncode": code, "seconds": time.perf_counter() - start, "stderr": stderr}


def readable(command: str, work: str) -> str:
    """`command` without this machine's paths: the interpreter as `python`, the scratch folder as `$WORK`."""
    return command.replace(shlex.quote(sys.executable), "python").replace(work, "$WORK")


def checkpoint_files(output_dir: str) -> dict[str, list[str]]:
    """Every checkpoint folder and its entries (FSDP's sharded state is a folder of .distcp files)."""
    root = os.path.join(output_dir, "checkpoints")
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    return {name: sorted(os.listdir(os.path.join(root, name))) for name in names}


def check_final_model(output_dir: str, steps: int) -> dict:
    """The final save loads with `from_pretrained`, gives a finite loss, and the log reached `steps`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)
    with open(os.path.join(output_dir, "train_log.jsonl")) as f:
        last_step = max(json.loads(line)["step"] for line in f if line.strip())
    return {"class": type(model).__name__, "loss": loss, "finite": math.isfinite(loss), "last_logged_step": last_step}


def part_fsdp(sizes: Sizes, device: torch.device, env: dict, guard: Guard, part_end: float) -> dict:
    """Launch training (FSDP on a GPU), checkpoint, resume from the checkpoint in a second launch, load the result."""
    with tempfile.TemporaryDirectory(prefix="bench_gpu_fsdp_") as work:
        return fsdp_runs(sizes, device.type == "cuda", guard, part_end, work)


def fsdp_runs(sizes: Sizes, fsdp: bool, guard: Guard, part_end: float, work: str) -> dict:
    """`part_fsdp` in the folder `work`."""
    corpus, output_dir = write_corpus(work), os.path.join(work, "run")
    first, resumed = sizes.fsdp_steps
    save_every = max(1, first // 2)  # the first launch ends on a checkpoint
    result = {
        "fsdp": fsdp,
        "fsdp_command": shlex.join(
            train_command(output_dir, corpus, sizes.fsdp_preset, first, save_every, True, False)
        ),
    }
    if not fsdp:
        result["skipped_fsdp"] = (
            "no accelerator: accelerate refuses FSDP on a CPU-only machine (accelerate 1.15's FSDP plugin raises "
            "'There are currently no available devices found, must be one of XPU, CUDA, ...'), so the same "
            "training command ran without `accelerate launch --use_fsdp`"
        )
        print(f"FSDP skipped: {result['skipped_fsdp']}", flush=True)
    launches = []
    for steps, resume in ((first, False), (resumed, True)):
        cmd = train_command(output_dir, corpus, sizes.fsdp_preset, steps, save_every, fsdp, resume)
        launches.append(run_launch(cmd, part_end - guard.elapsed()))
        if resume:
            # the newest checkpoint the first launch left (the loop saves the final step as the model instead)
            newest = max(launches[0]["checkpoints"], key=lambda name: int(name.split("-")[-1]), default="none")
            launches[-1]["resumed_from"] = newest
            launches[-1]["resumed"] = (
                f"resuming from {os.path.join(output_dir, 'checkpoints', newest)}" in (launches[-1]["stderr"])
            )
        launches[-1]["checkpoints"] = checkpoint_files(output_dir)
        print(
            f"launch {len(launches)}: exit {launches[-1]['returncode']} in {launches[-1]['seconds']:.1f} s", flush=True
        )
        if launches[-1]["returncode"] != 0:
            print(launches[-1]["stderr"][-3000:], file=sys.stderr)
            break
    for launch in launches:
        launch["stderr"] = launch["stderr"][-2000:]
        launch["command"] = readable(launch["command"], work)
    result["fsdp_command"] = readable(result["fsdp_command"], work)
    result["launches"] = launches
    if all(launch["returncode"] == 0 for launch in launches) and len(launches) == 2:
        result["final_model"] = check_final_model(output_dir, resumed)
    return result
