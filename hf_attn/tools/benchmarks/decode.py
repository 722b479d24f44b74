"""Decoding benchmarks' building blocks: prefill and greedy steps, cache kinds, batch copies, generate().

Used by the decode benchmarks (`serving`, `llamacpp`, `gpu`) and by tests of the decode paths.
"""

import copy
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache, DynamicLayer

from ...model.configuration_hf_attn import ATTENTION_DESIGNS, ATTENTION_TYPES, HfAttnConfig


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


# The decode and capacity benchmarks' trunk (the README's decode numbers use it), and MLA's dims on it:
# each design takes the ones among its own `fields` (the others derive theirs from head_dim 64).
DECODE_TRUNK = dict(hidden_size=512, num_attention_heads=8, num_hidden_layers=4, intermediate_size=1376)
DECODE_MLA_DIMS = dict(kv_lora_rank=128, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64)


def decode_configs(vocab_size: int, max_positions: int, window: int | None) -> dict[str, HfAttnConfig]:
    """One config per design on `DECODE_TRUNK`: every registered design, and MHA with a sliding `window`.

    Weights are drawn 4x wider than the default (initializer_range 0.08): random logits then have clear
    maxima, so greedy tokens can be compared across paths (with 0.02 the top logits nearly tie).
    """
    trunk = dict(DECODE_TRUNK, vocab_size=vocab_size, max_position_embeddings=max_positions, initializer_range=0.08)
    configs = {}
    for name in dict.fromkeys([*ATTENTION_TYPES, *ATTENTION_DESIGNS]):  # the built-ins first, in their order
        design = ATTENTION_DESIGNS[name]
        extra = {field: value for field, value in DECODE_MLA_DIMS.items() if field in design.fields}
        configs[name] = HfAttnConfig(**trunk, attention_type=name, head_dim=64, **extra)
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
    compiled step needs no data-dependent arange; they are made on `token`'s device (the model's), so
    a GPU step copies nothing from the host. Returns the new tokens, (B, steps).
    """
    tokens = []
    for i in range(steps):
        # (1, 1): one position for the whole batch
        position_ids = torch.full((1, 1), start + i, dtype=torch.long, device=token.device)
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
