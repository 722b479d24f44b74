"""Cache capacity: how many sequences of a given length each design's cache holds in a memory budget.

Each design (the decode benchmark's trunk: 4 layers, width 512, 8 heads; MLA rank 128 + RoPE 32; MHA
with a sliding window; Performer) runs one random sequence of `seq_len` tokens into a DynamicCache
in `dtype`, and the bytes that cache holds are measured (`cache_bytes`): per sequence, and per token.
The count is budget // bytes per sequence. The check then allocates it: the batch-1 cache copied
across that many sequences (`expand_cache_batch`), at `check_scale` of the budget, and measures
that the copies fit and one more would not. `scripts/bench_capacity.py` is the command line.
"""

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

from ...utils import cache_bytes, format_table
from .decode import decode_configs, expand_cache_batch
from .timing import build_model, write_json


@dataclass
class CapacityOptions:
    budget_gib: float = field(default=2.0, metadata={"help": "cache budget in GiB"})
    seq_len: int = field(default=8192, metadata={"help": "tokens per sequence"})
    dtype: Literal["bfloat16", "float32"] = field(default="bfloat16", metadata={"help": "the caches' dtype"})
    check_scale: float = field(default=0.25, metadata={"help": "allocate this fraction of the budget"})
    window: int = field(default=1024, metadata={"help": "sliding window of the windowed MHA (0: none)"})
    attn: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "attention kernel"})
    vocab_size: int = field(default=8192, metadata={"help": "vocabulary of the random models"})
    threads: int = field(default=2, metadata={"help": "torch threads"})
    seed: int = field(default=0, metadata={"help": "seed of the weights and the sequence"})
    plot: str | None = field(default=None, metadata={"help": "write the bar chart here (PNG)"})
    json: str | None = field(default=None, metadata={"help": "write the results here"})


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


def measure_capacity(options: CapacityOptions) -> dict:
    """Bytes per sequence and the capacity, measured and checked, for every design."""
    dtype = getattr(torch, options.dtype)
    budget = int(options.budget_gib * 2**30)
    results = {}
    for name, config in decode_configs(options.vocab_size, options.seq_len, options.window).items():
        model = build_model(config, options.attn, options.seed).to(dtype).eval()
        cache = sequence_cache(model, options.seq_len, options.seed)
        per_sequence = cache_bytes(cache)
        check = check_capacity(cache, int(budget * options.check_scale))
        results[name] = {
            "bytes_per_sequence": per_sequence,
            "bytes_per_token": per_sequence / options.seq_len,
            "formula_bytes": config.kv_cache_elements(options.seq_len) * dtype.itemsize,
            "sequences": capacity(per_sequence, budget),
            "check": check,
        }
        del model, cache
    return results


def capacity_table(results: dict) -> str:
    """Per design: bytes per token and sequence, the formula's agreement, the count against MHA's, the check."""
    mha = results["mha"]["sequences"]
    rows = [
        [
            name,
            round(r["bytes_per_token"]),
            r["bytes_per_sequence"] / 2**20,
            r["formula_bytes"] == r["bytes_per_sequence"],
            r["sequences"],
            r["sequences"] / mha,
            r["check"]["sequences"],
            r["check"]["fits"],
        ]
        for name, r in results.items()
    ]
    headers = ["design", "B/token", "MiB/sequence", "= formula", "sequences", "x MHA", "allocated", "check"]
    return format_table(headers, rows)


def run_capacity_benchmark(options: CapacityOptions) -> dict:
    """Measure every design, print the table and the MLA goal, write `plot` and `json`; returns the results."""
    torch.set_num_threads(options.threads)
    results = measure_capacity(options)
    print(f"{options.budget_gib:g} GiB of cache in {options.dtype}, sequences of {options.seq_len} tokens")
    print(f"check: the caches allocated at {options.check_scale:g} x the budget fit, and one more would not\n")
    print(capacity_table(results))
    if not all(r["formula_bytes"] == r["bytes_per_sequence"] for r in results.values()):
        print("(= formula: config.kv_cache_elements x the dtype's size; a state kept in float32 is twice that)")
    ratio = results["mla"]["sequences"] / results["mha"]["sequences"]
    print(
        f"\ngoal: MLA holds >= 3.5x MHA's sequences at 8 heads: {ratio:.2f}x, {'met' if ratio >= 3.5 else 'NOT met'}"
    )
    if options.plot:
        title = f"{options.seq_len}-token sequences in {options.budget_gib:g} GiB of {options.dtype} cache"
        plot_capacity(options.plot, {name: r["sequences"] for name, r in results.items()}, title)
        print(f"wrote {options.plot}")
    if options.json:
        write_json(options.json, options, results)
    return results
