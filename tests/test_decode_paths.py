"""Decode paths: a static cache, a compiled step and plain generate() give the dynamic eager path's greedy
tokens, for every design; a batch-1 cache copied across a batch equals running the batch."""

import pytest
import torch
from conftest import DESIGNS
from transformers import DynamicCache, StaticCache

from hf_attn.model.attention_mla import HfAttnMLAttention
from hf_attn.tools.benchmarks.decode import decode_steps, expand_cache_batch, filled_cache, generate_steps

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 6


def prompt_batch(batch: int = 2, length: int = 10, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (batch, length), generator=generator)  # (B, T), no padding


def decode(model, prompt, cache_implementation, step=None):
    """Prefill `prompt` (B, T) into a fresh cache of the given kind, then STEPS greedy steps through `step`."""
    length = prompt.shape[1]
    cache, token = filled_cache(model, prompt, cache_implementation, length + STEPS + 1)
    return decode_steps(model if step is None else step, cache, token, length, STEPS), cache


# One design per attention class and cache layer kind: GQA/MQA run MHA's class and cache layer.
COMPILED_DESIGNS = ("mha", "mla", "performer", "swa")


@pytest.mark.parametrize("design", DESIGNS)
def test_static_and_compiled_decode_equal_dynamic_eager(make_model, design):
    """The compiled step runs through dynamo with the "eager" backend: graph capture of the whole step
    (static cache writes included) is what can break per design, and it costs seconds, where inductor's
    C++ code generation costs a minute or more per design on 2 cores. `scripts/bench_decode.py` compiles
    every design with inductor and checks its tokens against the dynamic eager path."""
    model = make_model(design)
    prompt = prompt_batch()
    dynamic, dynamic_cache = decode(model, prompt, "dynamic")
    static, static_cache = decode(model, prompt, "static")
    assert isinstance(dynamic_cache, DynamicCache) and isinstance(static_cache, StaticCache)
    assert torch.equal(static, dynamic)
    assert len(set(dynamic.flatten().tolist())) > STEPS // 2  # not one token repeated
    if design in COMPILED_DESIGNS:
        torch._dynamo.reset()
        compiled, _ = decode(model, prompt, "static", step=torch.compile(model, backend="eager", dynamic=False))
        assert torch.equal(compiled, dynamic)


def test_mla_static_decode_is_absorbed(make_model, monkeypatch):
    """MLA's absorbed step runs on a StaticCache, over the whole buffer, and equals the dynamic eager path."""
    model = make_model("mla")
    prompt = prompt_batch(length=8)  # "auto" absorbs chunks up to 16 tokens: the prefill too
    calls = []
    original = HfAttnMLAttention._absorbed_attention
    monkeypatch.setattr(
        HfAttnMLAttention, "_absorbed_attention", lambda self, *a: calls.append(a[2].shape) or original(self, *a)
    )
    dynamic, _ = decode(model, prompt, "dynamic")
    calls.clear()
    static, cache = decode(model, prompt, "static")
    # every call of both layers attended over the whole static buffer: (B, 1, max_len, r + rope)
    entry = model.config.kv_lora_rank + model.config.qk_rope_head_dim
    assert calls == [(2, 1, 8 + STEPS + 1, entry)] * 2 * (1 + STEPS)
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("design", DESIGNS)
def test_cache_copied_across_batch_equals_batched_prefill(make_model, design, cache_implementation):
    """The benchmark's shortcut: one prefill copied to 3 rows decodes like 3 rows prefilled together."""
    model = make_model(design)
    prompt = prompt_batch(batch=1)
    cache, token = filled_cache(model, prompt, cache_implementation, prompt.shape[1] + STEPS + 1)
    expand_cache_batch(cache, 3)
    copied = decode_steps(model, cache, token.expand(3, 1), prompt.shape[1], STEPS)
    batched, _ = decode(model, prompt.expand(3, -1), cache_implementation)
    assert copied.shape == (3, STEPS)
    assert torch.equal(copied, batched)


@pytest.mark.parametrize("design", DESIGNS)
def test_generate_continuing_a_cache_equals_plain_generate(make_model, design):
    """`generate_steps` (generate's loop on a filled cache) gives plain generate()'s tokens."""
    model = make_model(design)
    prompt = prompt_batch()
    plain = model.generate(prompt, max_new_tokens=STEPS + 1, do_sample=False, pad_token_id=0)[:, -STEPS:]
    cache, token = filled_cache(model, prompt, "dynamic", prompt.shape[1] + STEPS + 1)
    assert torch.equal(generate_steps(model, cache, prompt, token, STEPS), plain)


@pytest.mark.parametrize("design", DESIGNS)
def test_plain_generate_takes_the_fastest_cache(make_model, design):
    """A plain generate() decodes on the path `scripts/bench_decode.py` measured fastest: a StaticCache
    where the cache grows with the sequence; a DynamicCache for a sliding window (transformers' static
    sliding layer copies its buffer twice a step) and Performer (the same state layer in both). A
    cache or a `cache_implementation` the caller passes still wins. Needs
    /tmp/proposals/decode-generation-default.patch (the `_prepare_cache_for_generation` hook)."""
    model = make_model(design)
    prompt = prompt_batch()
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    plain = model.generate(prompt, **kwargs)
    bounded = design in ("swa", "performer")
    assert type(plain.cache) is (DynamicCache if bounded else StaticCache)
    assert model.generation_config.cache_implementation is None  # the user's config is left alone
    other = "static" if bounded else "dynamic"
    explicit = model.generate(prompt, cache_implementation=other, **kwargs)
    assert type(explicit.cache) is (StaticCache if other == "static" else DynamicCache)
    passed = DynamicCache(config=model.config)
    assert model.generate(prompt, cache=passed, **kwargs).cache is passed
    assert torch.equal(plain.sequences, explicit.sequences)
