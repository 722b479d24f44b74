"""Time one training step of hf_attn MHA against the same math without the framework, Llama and nanoGPT.

Four models train side by side on one fixed random batch:

    hf_attn   HfAttnForCausalLM, attention_type="mha"
    plain     `PlainDecoder`: hf_attn's exact math in bare PyTorch, with hf_attn's weights
    llama     transformers' LlamaForCausalLM with hf_attn's weights
    nanogpt   `NanoGPTStyleDecoder`: learned positions, LayerNorm, 4x GELU MLP, same width and depth

A step is forward (with labels = input_ids), backward, AdamW step and zero_grad. The models run in
one process, interleaved (each repetition flips the order), and the table reports the median ms per
step and ratios: hf_attn / plain is the framework's overhead (goal <= 1.05), plain / nanogpt what the
architecture (RoPE, SwiGLU, RMSNorm) costs against nanoGPT's, hf_attn / llama hf_attn against
transformers' own Llama. `scripts/bench_train.py` is the command line.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from ...model.configuration_hf_attn import HfAttnConfig
from ...utils import format_table
from .plain_decoder import NanoGPTStyleDecoder, PlainDecoder
from .timing import (
    build_model,
    paired_ratio,
    profile_alternating,
    profile_table,
    reference_twin,
    summarize,
    time_alternating,
    write_json,
)

# Two sizes: (a) nanoGPT's CPU recipe, (b) its GPU recipe. vocab 65 is a character-level vocabulary (tiny Shakespeare).
SIZES = {
    "a": dict(num_hidden_layers=4, num_attention_heads=4, hidden_size=128, context=64, batch=12, vocab_size=65),
    "b": dict(num_hidden_layers=6, num_attention_heads=6, hidden_size=384, context=256, batch=8, vocab_size=65),
}
MODELS = ("hf_attn", "plain", "llama", "nanogpt")
# Ratios reported, as (numerator, denominator), and the goal of each where the project set one.
RATIOS = (("hf_attn", "plain"), ("hf_attn", "llama"), ("plain", "nanogpt"), ("hf_attn", "nanogpt"))
GOALS = {("hf_attn", "plain"): 1.05}


@dataclass
class TrainBenchOptions:
    sizes: list[str] = field(default_factory=lambda: sorted(SIZES), metadata={"help": f"of {sorted(SIZES)}"})
    steps: int = field(default=30, metadata={"help": "timed steps per model"})
    warmup: int = field(default=3, metadata={"help": "untimed steps per model first"})
    attn: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "hf_attn's and Llama's kernel"})
    threads: int = field(default=2, metadata={"help": "torch threads"})
    seed: int = field(default=0, metadata={"help": "seed of the weights and the batch"})
    compile: bool = field(default=False, metadata={"help": "also time torch.compile'd models"})
    profile: bool = field(default=False, metadata={"help": "print the top ops by self CPU time, hf_attn and plain"})
    profile_steps: int = field(default=10, metadata={"help": "profiled steps per model"})
    json: str | None = field(default=None, metadata={"help": "write the results here"})

    def __post_init__(self):
        if unknown := [s for s in self.sizes if s not in SIZES]:
            raise ValueError(f"--sizes: {unknown} are not among {sorted(SIZES)}")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError("--steps must be >= 1 and --warmup >= 0")


def swiglu_intermediate_size(hidden_size: int, multiple_of: int = 8) -> int:
    """4 * hidden * 2/3 rounded to the nearest multiple of `multiple_of`: a SwiGLU MLP with the
    parameter count of a 4x GELU MLP (Shazeer 2020; Llama rounds the same way, upwards, to 256)."""
    return multiple_of * round(4 * hidden_size * 2 / 3 / multiple_of)


def make_train_step(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    lr: float = 3e-4,
    optimizer: torch.optim.Optimizer | None = None,
    max_grad_norm: float | None = None,
) -> Callable[[], float]:
    """One training step on a fixed batch: forward with labels, backward, clipping when `max_grad_norm`
    is given, the optimizer's step (AdamW at `lr` unless one is given), zero_grad."""
    optimizer = optimizer if optimizer is not None else torch.optim.AdamW(model.parameters(), lr=lr)

    def step() -> float:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def build_models(size: str, attn: str, seed: int) -> tuple[dict[str, torch.nn.Module], torch.Tensor]:
    """The four models of `MODELS` in training mode (hf_attn's weights in plain and llama), and a batch."""
    s = SIZES[size]
    config = HfAttnConfig(
        vocab_size=s["vocab_size"],
        hidden_size=s["hidden_size"],
        intermediate_size=swiglu_intermediate_size(s["hidden_size"]),
        num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"],
        max_position_embeddings=s["context"],
        attention_type="mha",
    )
    ours = build_model(config, attn, seed).train()
    torch.manual_seed(seed)
    models = {
        "hf_attn": ours,
        "plain": PlainDecoder.from_hf_attn(ours),
        "llama": reference_twin(ours).train(),
        "nanogpt": NanoGPTStyleDecoder(config).train(),
    }
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, s["vocab_size"], (s["batch"], s["context"]), generator=generator)
    return models, batch


def print_profiles(fns: dict, warmup: int, steps: int, size: str) -> None:
    """Top ops by self CPU time of hf_attn and plain, profiled alternately after `warmup` steps each."""
    fns = {name: fns[name] for name in ("hf_attn", "plain")}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for name, ops in profile_alternating(fns, steps).items():
        print(f"== size {size}, {name}: top ops by self CPU time, mean of {steps} alternating steps ==")
        print(profile_table(ops), end="\n\n")


def time_size(size: str, mode: str, models: dict, batch: torch.Tensor, options: TrainBenchOptions) -> dict:
    """Time the training steps of `models` (compiled first when `mode` is "compiled"); one result record."""
    if mode == "compiled":
        torch._dynamo.reset()
        models = {name: torch.compile(model) for name, model in models.items()}
    fns = {name: make_train_step(model, batch) for name, model in models.items()}
    if options.profile and mode == "eager":
        print_profiles(fns, options.warmup, options.profile_steps, size)
    # Compilation happens in the first calls: give the compiled models a few more warmups.
    warmup = options.warmup + (3 if mode == "compiled" else 0)
    times = time_alternating(fns, options.steps, warmup, desc=f"size {size} {mode}")
    ratios = {
        f"{a}/{b}": {
            "ratio": median_ratio(times[a], times[b]),
            "paired": paired_ratio(times[a], times[b]),
            "goal": GOALS.get((a, b)),
        }
        for a, b in RATIOS
    }
    return {
        "size": size,
        "dims": SIZES[size],
        "mode": mode,
        "attn": options.attn,
        "ms_per_step": {name: summarize(t) for name, t in times.items()},
        "ratios": ratios,
    }


def median_ratio(a: list[float], b: list[float]) -> float:
    """Ratio of the medians of two lists of timings."""
    return summarize(a)["median"] / summarize(b)["median"]


def table_rows(results: list[dict]) -> list[list]:
    """One row per (size, mode): ms per model, then each ratio, then the framework-overhead goal."""
    rows = []
    for r in results:
        s, ms, ratios = r["dims"], r["ms_per_step"], r["ratios"]
        dims = f"{s['num_hidden_layers']}L {s['num_attention_heads']}H d{s['hidden_size']} T{s['context']}"
        overhead = ratios["hf_attn/plain"]
        verdict = "met" if overhead["ratio"] <= overhead["goal"] else "NOT met"
        rows.append(
            [
                r["size"],
                f"{dims} B{s['batch']}",
                r["mode"],
                *(ms[name]["median"] for name in MODELS),
                *(f"{ratios[f'{a}/{b}']['ratio']:.3f} ({ratios[f'{a}/{b}']['paired']:.3f})" for a, b in RATIOS),
                f"<= {overhead['goal']:.2f}: {verdict}",
            ]
        )
    return rows


def run_train_benchmark(options: TrainBenchOptions) -> list[dict]:
    """Every size (eager, and compiled with `compile`); prints the table, writes `json`; returns the records."""
    torch.set_num_threads(options.threads)
    print(f"torch {torch.__version__}, {options.threads} threads, float32, attn_implementation={options.attn}")
    print(
        f"warmup {options.warmup} steps, then {options.steps} timed steps per model, interleaved: {', '.join(MODELS)}"
    )
    print("intermediate_size = 4 * width * 2/3 rounded to the nearest multiple of 8 (hf_attn, plain, llama)\n")
    results = []
    for size in options.sizes:
        models, batch = build_models(size, options.attn, options.seed)
        for mode in ["eager"] + (["compiled"] if options.compile else []):
            result = time_size(size, mode, models, batch, options)
            results.append(result)
            ms = ", ".join(f"{name} {result['ms_per_step'][name]['median']:.1f} ms" for name in MODELS)
            print(f"size {size} {mode}: {ms}", flush=True)

    print("\nmedian ms per training step (fwd + bwd + AdamW + zero_grad)")
    print("a/b is the ratio of the medians, (the median of per-repetition ratios) in brackets")
    print("hf_attn/plain: framework overhead; plain/nanogpt: architecture (RoPE, SwiGLU, RMSNorm vs nanoGPT's)")
    headers = ["size", "dims", "mode", *(f"{m} ms" for m in MODELS), *(f"{a}/{b}" for a, b in RATIOS), "goal"]
    print(format_table(headers, table_rows(results)))
    if options.json:
        write_json(options.json, options, results)
    return results
