"""Timing helpers shared by `scripts/bench_train.py` and `scripts/bench_decode.py`.

Benchmarks here compare hf_attn against transformers' own Llama / DeepseekV3 classes carrying the
*same* weights (through `to_llama` / `to_deepseek_v3`), in one process, with the runs of the models
interleaved. On a shared, noisy CPU that matters more than anything else: a slow spell hits both
models alike, so the per-model medians and their ratio stay meaningful even when absolute times
drift. Every repetition also flips the order of the models, so neither always runs "warm" after
the other.
"""

import copy
import json
import os
import statistics
import threading
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache, DynamicLayer

from ..model.configuration_hf_attn import ATTENTION_TYPES, HfAttnConfig
from ..model.modeling_hf_attn import HfAttnForCausalLM
from ..utils import cache_bytes, environment, format_table
from .export import to_deepseek_v3, to_llama


def swiglu_intermediate_size(hidden_size: int, multiple_of: int = 8) -> int:
    """4 * hidden * 2/3 rounded to the nearest multiple of `multiple_of`: a SwiGLU MLP with the
    parameter count of a 4x GELU MLP (Shazeer 2020; Llama rounds the same way, upwards, to 256)."""
    return multiple_of * round(4 * hidden_size * 2 / 3 / multiple_of)


def build_model(config: HfAttnConfig, attn_implementation: str = "sdpa", seed: int = 0) -> HfAttnForCausalLM:
    """A float32 `HfAttnForCausalLM` with seeded random weights and the given attention kernel."""
    torch.manual_seed(seed)
    return HfAttnForCausalLM._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)


def reference_twin(model: HfAttnForCausalLM):
    """transformers' own class with `model`'s weights: DeepseekV3 for MLA, Llama otherwise."""
    return to_deepseek_v3(model) if model.config.attention_type == "mla" else to_llama(model)


def alternating_order(names: list[str], i: int) -> list[str]:
    """Repetition i runs `names` in order when i is even and in reverse when i is odd."""
    return list(names) if i % 2 == 0 else list(reversed(names))


def time_alternating(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 0, desc: str | None = None
) -> dict[str, list[float]]:
    """Run every function `warmup` times, then `repeats` times each, interleaved, in milliseconds.

    Repetition i runs the functions in `alternating_order`.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in tqdm(range(repeats), desc=desc, leave=False, disable=desc is None):
        for name in alternating_order(names, i):
            start = time.perf_counter()
            fns[name]()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def summarize(samples: list[float]) -> dict:
    """Median, min, max and interquartile range of a list of timings."""
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "iqr": q[2] - q[0],
        "n": len(samples),
        "samples": samples,
    }


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of a[i] / b[i]: runs i of two interleaved functions saw nearly the same machine load,
    so on a noisy machine this is steadier than the ratio of the two medians."""
    return statistics.median(x / y for x, y in zip(a, b))


def write_json(path: str, args, results) -> None:
    """Write `{"args", "environment", "results"}` to `path`."""
    with open(path, "w") as f:
        json.dump({"args": vars(args), "environment": environment(), "results": results}, f, indent=2)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
# Training step


def make_train_step(model: torch.nn.Module, input_ids: torch.Tensor, lr: float = 3e-4) -> Callable[[], float]:
    """One training step on a fixed batch: forward with labels, backward, AdamW step, zero_grad."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step() -> float:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def profile_alternating(fns: dict[str, Callable[[], object]], steps: int) -> dict[str, dict[str, dict]]:
    """Self CPU time and call count per op, per function, from `steps` profiled calls of each.

    The calls alternate between the functions, one profiler session per call, so load from other
    processes falls on all of them alike (profiling them one after the other does not compare).
    Returns {name: {op: {"self_ms": per call of fn, "calls": per call of fn}}}.
    """
    from torch.profiler import ProfilerActivity, profile

    totals: dict[str, dict[str, list[float]]] = {name: {} for name in fns}
    names = list(fns)
    for i in tqdm(range(steps), desc="profiling", leave=False):
        for name in alternating_order(names, i):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fns[name]()
            for event in prof.key_averages():
                entry = totals[name].setdefault(event.key, [0.0, 0])
                entry[0] += event.self_cpu_time_total / 1e3
                entry[1] += event.count
    return {
        name: {op: {"self_ms": t / steps, "calls": c / steps} for op, (t, c) in ops.items()}
        for name, ops in totals.items()
    }


def profile_table(ops: dict[str, dict], row_limit: int = 15) -> str:
    """The `row_limit` ops with the most self CPU time, from one entry of `profile_alternating`."""
    total = sum(v["self_ms"] for v in ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1]["self_ms"])[:row_limit]
    rows = [[op[:60], v["self_ms"], 100 * v["self_ms"] / total, f"{v['calls']:g}"] for op, v in top]
    table = format_table(["op", "self ms/step", "% self", "calls/step"], rows)
    return f"{table}\ntotal self CPU {total:.1f} ms/step"


# ---------------------------------------------------------------------------------------------
# Decoding


@torch.inference_mode()
def prefill(model: torch.nn.Module, prompt: torch.Tensor) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, float]:
    """Run `prompt` (B, T) through `model` into a fresh DynamicCache.

    Only the last position's logits are computed (`logits_to_keep=1`), as `generate` does.
    Returns the cache, the greedy next token (B, 1), the last logits (B, vocab) and the seconds taken.
    """
    cache = DynamicCache(config=model.config)
    start = time.perf_counter()
    logits = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    seconds = time.perf_counter() - start
    return cache, logits.argmax(-1, keepdim=True), logits, seconds


@torch.inference_mode()
def greedy_decode(
    model: torch.nn.Module, cache: DynamicCache, token: torch.Tensor, steps: int
) -> tuple[list[int], float]:
    """`steps` greedy decode steps, one token each, extending `cache`; returns the tokens and seconds."""
    tokens = []
    start = time.perf_counter()
    for _ in range(steps):
        logits = model(input_ids=token, cache=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)  # (B, 1)
        tokens.append(token.item())
    return tokens, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Decoding at serving scale: batches, cache implementations, compiled steps, plain generate()

# The ways a decode step can run, as timed by `scripts/bench_decode.py`.
DECODE_PATHS = {
    "dynamic": "DynamicCache, eager (transformers' default cache)",
    "static": "StaticCache, eager",
    "compiled": "StaticCache, forward under torch.compile (inductor)",
    "generate": "plain generate(): the cache the model's generation config picks, generate's own loop",
}


# The decode and capacity benchmarks' trunk (the README's decode numbers use it), and MLA's dims on it.
DECODE_TRUNK = dict(hidden_size=512, num_attention_heads=8, num_hidden_layers=4, intermediate_size=1376)
DECODE_MLA_DIMS = dict(kv_lora_rank=128, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64)


def decode_configs(vocab_size: int, max_positions: int, window: int | None) -> dict[str, HfAttnConfig]:
    """One config per design on `DECODE_TRUNK`: every attention type, and MHA with a sliding `window`.

    Weights are drawn 4x wider than the default (initializer_range 0.08): random logits then have clear
    maxima, so greedy tokens can be compared across paths (with 0.02 the top logits nearly tie).
    """
    trunk = dict(DECODE_TRUNK, vocab_size=vocab_size, max_position_embeddings=max_positions, initializer_range=0.08)
    configs = {}
    for attention_type in ATTENTION_TYPES:
        extra = DECODE_MLA_DIMS if attention_type == "mla" else dict(head_dim=64)
        configs[attention_type] = HfAttnConfig(**trunk, attention_type=attention_type, **extra)
    if window:
        configs["mha_window"] = HfAttnConfig(**trunk, attention_type="mha", head_dim=64, sliding_window=window)
    return configs


def default_cache_implementation(model: torch.nn.Module) -> str:
    """The cache a plain `generate()` builds for `model`: its generation config's, else the model's own
    default (`default_cache_implementation`, which hf_attn's generate hook applies), else a DynamicCache."""
    configured = getattr(model.generation_config, "cache_implementation", None)
    return configured or getattr(model, "default_cache_implementation", None) or "dynamic"


def new_cache(model: torch.nn.Module, cache_implementation: str, max_cache_len: int) -> Cache:
    """An empty cache of the kind `generate(cache_implementation=...)` builds ("dynamic" or "static")."""
    if cache_implementation == "dynamic":
        return DynamicCache(config=model.config)
    if cache_implementation == "static":
        return StaticCache(config=model.config, max_cache_len=max_cache_len)
    raise ValueError(f"cache_implementation must be 'dynamic' or 'static', got {cache_implementation!r}")


def _repeat_batch(value, batch: int):
    """`value` with its batch axis (dim 0, size 1) repeated `batch` times; dicts of tensors element-wise."""
    if isinstance(value, dict):
        return {key: _repeat_batch(v, batch) for key, v in value.items()}
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == 1:
        return value.repeat_interleave(batch, dim=0)
    return value


def expand_cache_batch(cache: Cache, batch: int) -> Cache:
    """Copy a batch-1 cache `batch` times along the batch axis, in place, for any layer type.

    transformers' `batch_repeat_interleave` exists for dynamic layers only; static and linear-attention
    layers hold the same kind of (1, ...) tensors (keys/values, or recurrent states), repeated here.
    """
    for layer in cache.layers:
        for name, value in list(vars(layer).items()):
            setattr(layer, name, _repeat_batch(value, batch))
        if hasattr(layer, "batch_size"):
            layer.batch_size = batch
    return cache


@torch.inference_mode()
def filled_cache(model, prompt: torch.Tensor, cache_implementation: str, max_cache_len: int, source=None):
    """A batch-1 cache of the given kind holding `prompt` (1, T), and the greedy next token (1, 1).

    `source`, the (DynamicCache, token) of an earlier call with the same model and prompt, is copied
    into the new cache instead of running the prompt again where every layer is a plain full-attention
    layer (sliding-window and linear-attention layers keep a different state, and run the prompt).
    """
    if source is not None and all(type(layer) is DynamicLayer for layer in source[0].layers):
        if cache_implementation == "dynamic":
            return copy.deepcopy(source[0]), source[1]
        cache = new_cache(model, cache_implementation, max_cache_len)
        for i, layer in enumerate(source[0].layers):
            cache.update(layer.keys, layer.values, i)
        return cache, source[1]
    cache = new_cache(model, cache_implementation, max_cache_len)
    logits = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1).logits
    return cache, logits[:, -1:].argmax(-1)  # (1, 1)


@torch.inference_mode()
def decode_steps(step: Callable, cache: Cache, token: torch.Tensor, start: int, steps: int) -> torch.Tensor:
    """`steps` greedy decode steps for a batch: `token` (B, 1) at position `start`, the cache extended.

    `step` is the model or its compiled forward. Position ids are passed, as generate does, so a
    compiled step needs no data-dependent arange. Returns the new tokens, (B, steps).
    """
    tokens = []
    for i in range(steps):
        position_ids = torch.full((1, 1), start + i, dtype=torch.long)  # (1, 1): one position for the batch
        logits = step(input_ids=token, position_ids=position_ids, cache=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)  # (B, 1)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


@torch.inference_mode()
def generate_steps(model, cache: Cache, prompt: torch.Tensor, token: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` greedy tokens from `model.generate()`, continuing a cache that holds `prompt` (B, T).

    generate feeds only what the cache lacks (the token after the prompt), so this times generate's own
    loop (input preparation, logits processors, stopping criteria) on the cache a plain call builds.
    """
    config = copy.deepcopy(model.generation_config)
    config.cache_implementation = None  # the cache is passed in: generate refuses both
    config.update(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0)
    # generate slices off what a cache holds by its length; a cache of linear-attention states has no
    # length (transformers skips the slicing for it), so it is given only the new token.
    linear = all(getattr(cache, "is_linear", [False]))
    ids = token if linear else torch.cat((prompt, token), dim=1)  # (B, 1) or (B, T + 1)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, generation_config=config)
    return out[:, ids.shape[1] :]  # (B, steps)


def return_freed_memory() -> None:
    """Make glibc give every large freed block back to the system at once, so `PeakRSS` sees each run.

    glibc serves blocks from 128 KiB up with mmap, but raises that threshold after such a block is
    freed, and later blocks then come from the heap and stay resident. Fixing the threshold
    (mallopt M_MMAP_THRESHOLD) turns that off. Does nothing where libc is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory above the level at entry, sampled from a thread every `interval` seconds.

    CPU tensors have no allocator statistics like `torch.cuda.max_memory_allocated`; large tensors
    are mmap'd and returned to the system when freed, so the resident set follows them closely.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak_bytes = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.rss() - self.start)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.rss() - self.start)


# ---------------------------------------------------------------------------------------------
# Cache capacity: how many sequences of a given length fit in a memory budget


@torch.inference_mode()
def sequence_cache(model, seq_len: int, seed: int = 0) -> Cache:
    """The DynamicCache `model` holds after one random sequence of `seq_len` tokens (batch 1)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=generator)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def capacity(bytes_per_sequence: int, budget_bytes: int) -> int:
    """Whole sequences whose caches fit in `budget_bytes`."""
    if bytes_per_sequence <= 0:
        raise ValueError(f"bytes_per_sequence must be positive, got {bytes_per_sequence}")
    return budget_bytes // bytes_per_sequence


def check_capacity(cache: Cache, budget_bytes: int) -> dict:
    """Allocate `capacity` copies of the batch-1 `cache` and measure them: they fit, and one more would not.

    Returns the count, the bytes the allocated cache holds and whether both checks hold.
    """
    per_sequence = cache_bytes(cache)
    count = capacity(per_sequence, budget_bytes)
    allocated = cache_bytes(expand_cache_batch(copy.deepcopy(cache), count)) if count else 0
    return {
        "sequences": count,
        "allocated_bytes": allocated,
        "fits": allocated <= budget_bytes and allocated + per_sequence > budget_bytes,
    }


def plot_capacity(path: str, counts: dict[str, int], title: str) -> dict[str, float]:
    """Horizontal bars of sequences held per design; returns the bar lengths drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(counts) + 1.5))
    bars = ax.barh(list(counts), list(counts.values()), color="C0")
    ax.bar_label(bars, labels=[f"{n:,}" for n in counts.values()], padding=3)
    ax.invert_yaxis()  # first design on top
    ax.set_xlabel("sequences held")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {bar_name: bar.get_width() for bar_name, bar in zip(counts, bars)}
