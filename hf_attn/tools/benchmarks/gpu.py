"""GPU benchmark in one short run: bf16 training throughput and MFU, batched decode at 8192 tokens, FSDP.

Three parts, each with a time budget, under a global guard (`budget`, default 450 s) that skips
whatever no longer fits and says so in the report:

1. train   tokens/s of a bf16 training step (autocast, float32 master weights, fused AdamW) of the
           `gpt2-124m` preset for every registered attention design, with sdpa, and with
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
           prefill of a random prompt, copied across the batch; the decode steps (`decode_steps`)
           are real.
3. fsdp    the training command line once under `accelerate launch --use_fsdp` (one process):
           FSDP wrapping of the decoder layers, sharded checkpoints, a resume from the last one
           in a second launch, and the final save loaded back with `from_pretrained` (`gpu_fsdp`).

`smoke` runs every part with tiny sizes on the CPU; accelerate refuses FSDP without an
accelerator, so there it runs the same training command without FSDP and reports the skip.
`scripts/bench_gpu.py` is the command line; the report is written by `gpu_report`.
"""

import dataclasses
import importlib.util
import platform
import sys
import time
from dataclasses import dataclass, field

import torch

from ...model.configuration_hf_attn import ATTENTION_DESIGNS, HfAttnConfig
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...utils import HfAttnError, environment
from .decode import decode_steps, expand_cache_batch, filled_cache
from .gpu_fsdp import part_fsdp
from .gpu_report import write_report
from .timing import reference_twin

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from NVIDIA's data sheets, by device-name substring.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989.4e12, "H200": 989.4e12, "GH200": 989.4e12}
PEAK_BF16.update({"A100": 312e12, "L40S": 362e12, "B200": 2250e12})
PART_NAMES = ("train", "decode", "fsdp")
# The designs the decode part times, and after them transformers' twin of the first (its goal: MLA against both)
DECODE_DESIGNS = ("mla", "mha")


@dataclass
class GpuBenchOptions:
    out: str = field(metadata={"help": "the markdown report; the JSON goes next to it (.json)"})
    smoke: bool = field(default=False, metadata={"help": "every part on CPU with tiny sizes, in well under a minute"})
    budget: float | None = field(default=None, metadata={"help": "global seconds (default 450; smoke 120)"})
    parts: list[str] = field(default_factory=lambda: list(PART_NAMES), metadata={"help": f"of {list(PART_NAMES)}"})

    def __post_init__(self):
        if unknown := [part for part in self.parts if part not in PART_NAMES]:
            raise ValueError(f"--parts: {unknown} are not among {list(PART_NAMES)}")
        if self.budget is None:
            self.budget = 120.0 if self.smoke else 450.0
        if self.budget <= 0:
            raise ValueError("--budget must be positive")


@dataclasses.dataclass
class Sizes:
    """Everything `smoke` shrinks."""

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
    """The global time budget: `left()` seconds remain; `elapsed()` since the start."""

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


def device_environment(device: torch.device) -> dict:
    """The shared `environment()`, and the device's name, bf16 peak (None where unknown: no MFU then),
    CUDA version and whether flash_attn is installed."""
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or 'cpu'})"
    peak = next((flops for key, flops in PEAK_BF16.items() if key in name), None) if cuda else None
    return {
        **environment(),
        "device": name,
        "peak_bf16_flops": peak,
        "cuda_version": torch.version.cuda,
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
    }


# ---------------------------------------------------------------------------------------------- train


def flops_per_token(model: HfAttnForCausalLM, seq_len: int) -> float:
    """6 N + 6 L H T (d_qk + d_v): see the module docstring."""
    config = model.config
    embed = model.get_input_embeddings().weight
    n = sum(p.numel() for p in model.parameters() if p.dim() == 2 and p is not embed)
    n += config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0  # the tied head's matmul
    if not config.design.has_attention_weights:  # no T x T score matrix (Performer's linear attention)
        return 6.0 * n
    # the query-key and value head dims, as the attention module holds them (MLA: nope + rope, and v_head_dim)
    attention = model.model.layers[0].self_attn
    d_qk = getattr(attention, "qk_head_dim", None) or config.head_dim
    d_v = getattr(attention, "v_head_dim", None) or config.head_dim
    return 6.0 * n + 6.0 * config.num_hidden_layers * config.num_attention_heads * seq_len * (d_qk + d_v)


def bf16_train_step(model: HfAttnForCausalLM, batch: torch.Tensor, device: torch.device):
    """One step under bf16 autocast with AdamW (fused on a GPU); returns the loss tensor."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def train_one(attention_type: str, kernel: str, sizes: Sizes, device: torch.device, peak: float | None) -> dict:
    """Tokens/s and MFU of bf16 training steps of one attention type and kernel."""
    config = HfAttnConfig.from_preset(
        sizes.train_preset, attention_type=attention_type, max_position_embeddings=sizes.train_seq
    )
    torch.manual_seed(0)
    model = HfAttnForCausalLM._from_config(config, attn_implementation=kernel, dtype=torch.float32).to(device)
    model.train()
    batch = torch.randint(0, config.vocab_size, (sizes.train_batch, sizes.train_seq), device=device)
    step = bf16_train_step(model, batch, device)
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
        for attention_type in list(ATTENTION_DESIGNS):
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
    """The `DECODE_DESIGNS` at the decode preset with room for the context, and transformers' twin of the
    first (DeepseekV3 with the MLA weights, `reference_twin`), bf16."""
    room = sizes.decode_context + sizes.decode_steps + 8
    models = {}
    for attention_type in DECODE_DESIGNS:
        config = HfAttnConfig.from_preset(
            sizes.decode_preset, attention_type=attention_type, max_position_embeddings=room
        )
        torch.manual_seed(0)
        models[attention_type] = HfAttnForCausalLM._from_config(config, attn_implementation="sdpa")
    twin = reference_twin(models[DECODE_DESIGNS[0]])
    models[twin.config.model_type] = twin
    return {name: model.to(device=device, dtype=torch.bfloat16).eval() for name, model in models.items()}


@torch.inference_mode()
def decode_one(model, source, prompt: torch.Tensor, batch: int, cache_kind: str, sizes: Sizes) -> dict:
    """Greedy decode `sizes.decode_steps` tokens for `batch` copies of `prompt`'s cache; tokens/s over the batch."""
    max_len = prompt.shape[1] + sizes.decode_steps + 1
    cache, token = filled_cache(model, prompt, cache_kind, max_len, source=source)
    cache = expand_cache_batch(cache, batch)
    token = token.repeat(batch, 1)  # (B, 1)
    sync(prompt.device)
    start = time.perf_counter()
    decode_steps(model, cache, token, prompt.shape[1], sizes.decode_steps)
    sync(prompt.device)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": batch * sizes.decode_steps / seconds, "ms_per_step": 1e3 * seconds / sizes.decode_steps}


def decode_rows(name: str, model, prompt: torch.Tensor, sizes: Sizes, guard: Guard, part_end: float) -> list[dict]:
    """`decode_one` for one model at every batch size, dynamic and static cache, from one prefill."""
    with torch.inference_mode():
        source = filled_cache(model, prompt, "dynamic", prompt.shape[1])
    rows = []
    for batch in sizes.decode_batches:
        for cache_kind in ("dynamic", "static"):
            row = {"model": name, "batch": batch, "cache": cache_kind, "context": sizes.decode_context}
            if guard.elapsed() > part_end:
                rows.append({**row, "skipped": "time budget"})
                continue
            try:
                row.update(decode_one(model, source, prompt, batch, cache_kind, sizes))
            except Exception as error:  # an OOM at batch 64 must not end the run
                row["error"] = repr(error)[:300]
            free_memory(prompt.device)
            rows.append(row)
            print(f"decode: {row}", flush=True)
    return rows


def part_decode(sizes: Sizes, device: torch.device, env: dict, guard: Guard, part_end: float) -> list[dict]:
    """`decode_rows` for MLA, MHA and DeepseekV3."""
    models = decode_models(sizes, device)
    vocab = models[DECODE_DESIGNS[0]].config.vocab_size
    prompt = torch.randint(0, vocab, (1, sizes.decode_context), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(device)
    results = []
    for name, model in models.items():
        results += decode_rows(name, model, prompt, sizes, guard, part_end)
        free_memory(device)
    return results


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


def run_gpu_benchmark(options: GpuBenchOptions) -> dict:
    """Every part asked for, on CUDA (or on the CPU with `smoke`); writes the report and returns it."""
    if not options.smoke and not torch.cuda.is_available():
        raise HfAttnError("no CUDA device: run on a GPU, or pass --smoke for the CPU check")
    sizes = SMOKE if options.smoke else Sizes()
    device = torch.device("cpu" if options.smoke else "cuda")
    if options.smoke:
        torch.set_num_threads(1)
    guard = Guard(options.budget)
    env = device_environment(device)
    print(f"{env['device']}, peak bf16 {env['peak_bf16_flops']}, budget {options.budget:.0f} s", flush=True)
    report = run_parts(sizes, device, env, guard, options.parts)
    report.update(environment=env, smoke=options.smoke, budget_s=options.budget, seconds=guard.elapsed())
    for part in PARTS:
        if part not in options.parts:
            report["skipped_parts"][part] = "not asked for (--parts)"
    write_report(options.out, report, sizes)
    return report
