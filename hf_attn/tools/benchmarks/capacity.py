"""Cache capacity: how many sequences of a given length fit in a memory budget."""

import copy

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

from ...utils import cache_bytes
from .decode import expand_cache_batch


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
