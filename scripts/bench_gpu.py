"""GPU benchmark in one short run: bf16 training throughput and MFU, batched decode at 8192 tokens, FSDP.

Three parts, each with a time budget, under a global guard (`--budget`, default 450 s) that skips
whatever no longer fits and says so in the report:

1. train   tokens/s of a bf16 training step (autocast, float32 master weights, fused AdamW) of the
           `gpt2-124m` preset for every attention type in `ATTENTION_TYPES`, with sdpa, and with
           flash-attention 2 where `flash_attn` imports. Model FLOPs utilisation is
           achieved FLOP/s / the GPU's dense bf16 peak, with FLOPs per token (PaLM, appendix B):
               6 N + 6 L H T (d_qk + d_v)
           N the parameters that multiply activations (everything but the embedding table, the
           output head counted once even when tied), L layers, H query heads, T the sequence length,
           d_qk / d_v the query-key / value head dims (= 12 L H d T for MHA). Performer's linear
           attention is counted as 6 N only.
2. decode  greedy decode tokens/s (all sequences together) at batch 1 and 64 with 8192 tokens of
           context, for MLA, MHA and transformers' DeepseekV3 carrying the MLA weights
           (`to_deepseek_v3`), in bf16, with a dynamic and a static cache. The context is one
           prefill of a random prompt, copied across the batch; the decode steps are real.
3. fsdp    the training command line once under `accelerate launch --use_fsdp` (one process):
           FSDP wrapping of the decoder layers, sharded checkpoints, a resume from the last one
           in a second launch, and the final save loaded back with `from_pretrained`.

    python scripts/bench_gpu.py --out docs/bench/gpu.md          # writes gpu.md and gpu.json
    python scripts/bench_gpu.py --smoke --out /tmp/gpu_smoke.md  # every part on CPU, tiny, < 1 minute

`--smoke` runs every part with tiny sizes on the CPU; accelerate refuses FSDP without an
accelerator, so there it runs the same training command without FSDP and reports the skip.
"""

import argparse
import dataclasses
import glob
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import torch

from hf_attn import ATTENTION_TYPES, HfAttnConfig, HfAttnForCausalLM, to_deepseek_v3
from hf_attn.tools.benchmarks.decode import expand_cache_batch, filled_cache
from hf_attn.utils import markdown_table

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from NVIDIA's data sheets, by device-name substring.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989.4e12, "H200": 989.4e12, "GH200": 989.4e12}
PEAK_BF16.update({"A100": 312e12, "L40S": 362e12, "B200": 2250e12})


@dataclasses.dataclass
class Sizes:
    """Everything `--smoke` shrinks."""

    train_preset: str = "gpt2-124m"
    train_batch: int = 16
    train_seq: int = 1024
    train_warmup: int = 5
    train_steps: int = 20
    decode_preset: str = "gpt2-124m"
    decode_context: int = 8192
    decode_batches: tuple[int, ...] = (1, 64)
    decode_steps: int = 32
    fsdp_preset: str = "small"
    fsdp_steps: tuple[int, int] = (20, 30)  # first launch, then resumed to
    budgets: dict = dataclasses.field(default_factory=lambda: {"train": 150, "decode": 150, "fsdp": 150})


SMOKE = Sizes(
    train_preset="tiny",
    train_batch=2,
    train_seq=32,
    train_warmup=1,
    train_steps=2,
    decode_preset="tiny",
    decode_context=48,
    decode_batches=(1, 3),
    decode_steps=3,
    fsdp_preset="tiny",
    fsdp_steps=(4, 6),
    budgets={"train": 30, "decode": 30, "fsdp": 60},
)


class Guard:
    """The global time budget: `left()` seconds remain; `fits(part)` whether a part may start."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.monotonic(), budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Give cached GPU blocks back between runs, so one run's leftovers cannot make the next one fail."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict:
    """GPU name, its bf16 peak (None where unknown: no MFU then), and the library versions."""
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    peak = next((flops for key, flops in PEAK_BF16.items() if key in name), None) if device.type == "cuda" else None
    return {
        "device": name,
        "peak_bf16_flops": peak,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
    }


# ---------------------------------------------------------------------------------------------- train


def flops_per_token(model: HfAttnForCausalLM, seq_len: int) -> float:
    """6 N + 6 L H T (d_qk + d_v): see the module docstring."""
    config = model.config
    embed = model.get_input_embeddings().weight
    n = sum(p.numel() for p in model.parameters() if p.dim() == 2 and p is not embed)
    n += config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0  # the tied head's matmul
    if config.attention_type == "performer":
        return 6.0 * n
    if config.attention_type == "mla":
        d_qk, d_v = config.qk_nope_head_dim + config.qk_rope_head_dim, config.v_head_dim
    else:
        d_qk = d_v = config.head_dim
    return 6.0 * n + 6.0 * config.num_hidden_layers * config.num_attention_heads * seq_len * (d_qk + d_v)


def train_one(attention_type: str, kernel: str, sizes: Sizes, device: torch.device, peak: float | None) -> dict:
    """Tokens/s and MFU of bf16 training steps of one attention type and kernel."""
    config = HfAttnConfig.from_preset(
        sizes.train_preset, attention_type=attention_type, max_position_embeddings=sizes.train_seq
    )
    torch.manual_seed(0)
    model = HfAttnForCausalLM._from_config(config, attn_implementation=kernel, dtype=torch.float32).to(device)
    model.train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    batch = torch.randint(0, config.vocab_size, (sizes.train_batch, sizes.train_seq), device=device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(sizes.train_warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(sizes.train_steps):
        loss = step()
    sync(device)
    seconds = time.perf_counter() - start
    tokens_per_s = sizes.train_batch * sizes.train_seq * sizes.train_steps / seconds
    fpt = flops_per_token(model, sizes.train_seq)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "attention_type": attention_type,
        "kernel": kernel,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "ms_per_step": 1e3 * seconds / sizes.train_steps,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt,
        "mfu": fpt * tokens_per_s / peak if peak else None,
        "final_loss": loss.item(),
        "peak_mem_GiB": peak_mem,
    }


def part_train(sizes: Sizes, device: torch.device, env: dict, guard: Guard, part_end: float) -> list[dict]:
    """`train_one` for every attention type and kernel, while the part's budget lasts."""
    kernels = ["sdpa"] + (["flash_attention_2"] if env["flash_attn"] and device.type == "cuda" else [])
    results = []
    for kernel in kernels:
        for attention_type in ATTENTION_TYPES:
            if guard.elapsed() > part_end:
                results.append({"attention_type": attention_type, "kernel": kernel, "skipped": "time budget"})
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                results.append(train_one(attention_type, kernel, sizes, device, env["peak_bf16_flops"]))
            except Exception as error:  # one failing design (OOM, a kernel's head-dim limit) must not end the run
                results.append({"attention_type": attention_type, "kernel": kernel, "error": repr(error)[:300]})
            free_memory(device)
            print(f"train {kernel} {attention_type}: {results[-1]}", flush=True)
    return results


# --------------------------------------------------------------------------------------------- decode


def decode_models(sizes: Sizes, device: torch.device) -> dict[str, torch.nn.Module]:
    """MLA and MHA at the decode preset with room for the context, and DeepseekV3 with the MLA weights, bf16."""
    room = sizes.decode_context + sizes.decode_steps + 8
    models = {}
    for attention_type in ("mla", "mha"):
        config = HfAttnConfig.from_preset(
            sizes.decode_preset, attention_type=attention_type, max_position_embeddings=room
        )
        torch.manual_seed(0)
        models[attention_type] = HfAttnForCausalLM._from_config(config, attn_implementation="sdpa")
    models["deepseek_v3"] = to_deepseek_v3(models["mla"])
    return {name: model.to(device=device, dtype=torch.bfloat16).eval() for name, model in models.items()}


@torch.inference_mode()
def decode_one(model, source, prompt: torch.Tensor, batch: int, cache_kind: str, sizes: Sizes) -> dict:
    """Greedy decode `sizes.decode_steps` tokens for `batch` copies of `prompt`'s cache; tokens/s over the batch."""
    max_len = prompt.shape[1] + sizes.decode_steps + 1
    cache, token = filled_cache(model, prompt, cache_kind, max_len, source=source)
    cache = expand_cache_batch(cache, batch)
    token = token.repeat(batch, 1)  # (B, 1)
    start_pos, device = prompt.shape[1], prompt.device
    sync(device)
    start = time.perf_counter()
    for i in range(sizes.decode_steps):
        position_ids = torch.full((1, 1), start_pos + i, dtype=torch.long, device=device)  # (1, 1)
        logits = model(input_ids=token, position_ids=position_ids, cache=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)  # (B, 1)
    sync(device)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": batch * sizes.decode_steps / seconds, "ms_per_step": 1e3 * seconds / sizes.decode_steps}


def part_decode(sizes: Sizes, device: torch.device, env: dict, guard: Guard, part_end: float) -> list[dict]:
    """`decode_one` for MLA, MHA and DeepseekV3 at every batch size, dynamic and static cache."""
    models = decode_models(sizes, device)
    vocab = models["mha"].config.vocab_size
    prompt = torch.randint(0, vocab, (1, sizes.decode_context), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(device)
    results = []
    for name, model in models.items():
        with torch.inference_mode():
            source = filled_cache(model, prompt, "dynamic", prompt.shape[1])  # one prefill per model
        for batch in sizes.decode_batches:
            for cache_kind in ("dynamic", "static"):
                row = {"model": name, "batch": batch, "cache": cache_kind, "context": sizes.decode_context}
                if guard.elapsed() > part_end:
                    results.append({**row, "skipped": "time budget"})
                    continue
                try:
                    row.update(decode_one(model, source, prompt, batch, cache_kind, sizes))
                except Exception as error:  # an OOM at batch 64 must not end the run
                    row["error"] = repr(error)[:300]
                free_memory(device)
                results.append(row)
                print(f"decode: {row}", flush=True)
        del source
        free_memory(device)
    return results


# ----------------------------------------------------------------------------------------------- fsdp

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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


# --------------------------------------------------------------------------------------------- report


def fmt(value, spec: str = ",.0f") -> str:
    """A number formatted, or the dash of a missing one."""
    return "—" if value is None else format(value, spec)


def train_section(rows: list[dict], sizes: Sizes, env: dict) -> list[str]:
    """The training table: tokens/s, ms/step, MFU per attention type and kernel."""
    peak = env["peak_bf16_flops"]
    lines = [
        "## Training (bf16 autocast, float32 master weights, fused AdamW)",
        "",
        f"Preset `{sizes.train_preset}`, batch {sizes.train_batch} x {sizes.train_seq} tokens, "
        f"{sizes.train_warmup} warm-up steps, then {sizes.train_steps} timed. FLOPs per token = 6 N + "
        "6 L H T (d_qk + d_v) (PaLM appendix B; Performer: 6 N). "
        f"MFU against a dense bf16 peak of {fmt(peak and peak / 1e12, ',.1f')} TFLOP/s ({env['device']}).",
        "",
    ]
    table = []
    for r in rows:
        note = r.get("skipped") or r.get("error") or ""
        table.append(
            [
                r["attention_type"],
                r["kernel"],
                fmt(r.get("params_M"), ".1f"),
                fmt(r.get("tokens_per_s")),
                fmt(r.get("ms_per_step"), ".1f"),
                fmt(r.get("flops_per_token") and r["flops_per_token"] / 1e9, ".3f"),
                fmt(r.get("mfu") and 100 * r["mfu"], ".1f"),
                fmt(r.get("peak_mem_GiB"), ".1f"),
                note,
            ]
        )
    headers = ["attention", "kernel", "params (M)", "tokens/s", "ms/step", "GFLOP/token", "MFU %", "peak GiB", "note"]
    return lines + [markdown_table(headers, table, "llrrrrrrl"), ""]


def decode_section(rows: list[dict], sizes: Sizes) -> list[str]:
    """The decode table: tokens/s per model, batch and cache, and MLA's ratio to the others."""
    lines = [
        "## Decode (bf16, sdpa, greedy, eager step)",
        "",
        f"Preset `{sizes.decode_preset}`, {sizes.decode_context} tokens of context (one prefill copied "
        f"across the batch), {sizes.decode_steps} timed decode steps; tokens/s counts every sequence.",
        "",
    ]
    table = [
        [
            r["model"],
            r["batch"],
            r["cache"],
            fmt(r.get("tokens_per_s")),
            fmt(r.get("ms_per_step"), ".2f"),
            r.get("skipped") or r.get("error") or "",
        ]
        for r in rows
    ]
    lines += [markdown_table(["model", "batch", "cache", "tokens/s", "ms/step", "note"], table, "lrlrrl"), ""]
    best = {}
    for r in rows:
        if r.get("tokens_per_s"):
            key = (r["model"], r["batch"])
            best[key] = max(best.get(key, 0.0), r["tokens_per_s"])
    for batch in sizes.decode_batches:
        mla = best.get(("mla", batch))
        for other in ("mha", "deepseek_v3"):
            if mla and best.get((other, batch)):
                lines.append(
                    f"- batch {batch}, each on its faster cache: MLA / {other} = {mla / best[(other, batch)]:.2f}x"
                )
    return lines + [""]


def fsdp_section(result: dict) -> list[str]:
    """What the training launches did: command, exit codes, checkpoints, resume, final load."""
    lines = ["## Training CLI under FSDP", ""]
    if result.get("skipped"):
        return lines + [f"Skipped: {result['skipped']}.", ""]
    if result.get("skipped_fsdp"):
        lines += [f"**FSDP skipped**: {result['skipped_fsdp']}.", ""]
    lines += ["FSDP command (first launch):", "", "```", result["fsdp_command"], "```", ""]
    for i, launch in enumerate(result.get("launches", []), 1):
        what = "resume" if i == 2 else "first launch"
        lines.append(f"- {what}: exit {launch['returncode']} in {launch['seconds']:.1f} s")
        if "resumed" in launch:
            lines.append(
                f"  - resumed from the first launch's newest checkpoint, {launch['resumed_from']}: {launch['resumed']}"
            )
        for name, entries in launch["checkpoints"].items():
            lines.append(f"  - checkpoints/{name}: {', '.join(entries)}")
    final = result.get("final_model")
    if final:
        lines.append(
            f"- final save loads with `AutoModelForCausalLM.from_pretrained` as {final['class']}: "
            f"loss {final['loss']:.3f} on random ids (finite: {final['finite']}), "
            f"last logged step {final['last_logged_step']}"
        )
    elif result.get("error"):
        lines.append(f"- error: {result['error']}")
    else:
        lines.append("- the final model was not checked: a launch failed (stderr in the JSON)")
    return lines + [""]


def write_report(path: str, report: dict, sizes: Sizes) -> None:
    """`path` (markdown) and the same name with .json."""
    env = report["environment"]
    lines = [
        "# GPU benchmark (scripts/bench_gpu.py)",
        "",
        f"{env['device']}; torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, "
        f"Python {env['python']}; flash_attn installed: {env['flash_attn']}. "
        f"Mode: {'smoke (CPU, tiny sizes)' if report['smoke'] else 'full'}. "
        f"Total {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget.",
        "",
    ]
    for part, why in report["skipped_parts"].items():
        lines.append(f"- part `{part}` skipped: {why}")
    lines.append("")
    if "train" in report:
        lines += train_section(report["train"], sizes, env)
    if "decode" in report:
        lines += decode_section(report["decode"], sizes)
    if "fsdp" in report:
        lines += fsdp_section(report["fsdp"])
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"wrote {path} and its .json")


# ----------------------------------------------------------------------------------------------- main

PARTS = {"train": part_train, "decode": part_decode, "fsdp": part_fsdp}


def run_parts(sizes: Sizes, device: torch.device, env: dict, guard: Guard, parts: list[str]) -> dict:
    """Each part in turn within its budget; a part whose budget no longer fits the global one is skipped."""
    report = {"skipped_parts": {}}
    for part in parts:
        budget = sizes.budgets[part]
        if guard.left() < 0.5 * budget:
            report["skipped_parts"][part] = (
                f"{guard.left():.0f} s left of the global budget, the part needs ~{budget} s"
            )
            print(f"skipping {part}: {report['skipped_parts'][part]}", flush=True)
            continue
        part_end = guard.elapsed() + min(budget, guard.left())
        print(f"== {part} (budget {budget} s, {guard.left():.0f} s left)", flush=True)
        try:
            report[part] = PARTS[part](sizes, device, env, guard, part_end)
        except Exception as error:  # a broken part is reported; the others still run
            report[part] = [] if part != "fsdp" else {"error": repr(error)[:500]}
            report["skipped_parts"][part] = f"failed: {error!r}"[:500]
            print(f"{part} failed: {error!r}", file=sys.stderr, flush=True)
        free_memory(device)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the markdown report; the JSON goes next to it (.json)")
    parser.add_argument(
        "--smoke", action="store_true", help="every part on CPU with tiny sizes, in well under a minute"
    )
    parser.add_argument("--budget", type=float, default=None, help="global seconds (default 450; smoke 120)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --smoke for the CPU check")
    sizes = SMOKE if args.smoke else Sizes()
    budget = args.budget if args.budget is not None else (120.0 if args.smoke else 450.0)
    if budget <= 0:
        parser.error("--budget must be positive")
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        torch.set_num_threads(1)
    guard = Guard(budget)
    env = environment(device)
    print(f"{env['device']}, peak bf16 {env['peak_bf16_flops']}, budget {budget:.0f} s", flush=True)
    report = run_parts(sizes, device, env, guard, args.parts)
    report.update(environment=env, smoke=args.smoke, budget_s=budget, seconds=guard.elapsed())
    for part in PARTS:
        if part not in args.parts:
            report["skipped_parts"][part] = "not asked for (--parts)"
    write_report(args.out, report, sizes)


if __name__ == "__main__":
    main()
