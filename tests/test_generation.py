"""generate() and the text-generation pipeline: padding, caches, sampling, beams, cache size."""

import pytest
import torch
from conftest import DESIGNS
from torch.testing import assert_close
from transformers import DynamicCache, StaticCache, pipeline

from hf_attn.utils import cache_tensors

pytestmark = pytest.mark.usefixtures("single_thread")

PAD = 0
NEW = 8


def left_pad(prompts, pad=PAD):
    """Stacks 1-D prompts into (B, T) ids with left padding, and the attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def prompts(seed=0, lengths=(6, 10, 3)):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 256, (n,), generator=generator) for n in lengths]


def greedy(model, ids, mask, **kwargs):
    return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, **kwargs)


def cache_of(output):
    """generate's cache: `cache` in transformers 5, `past_key_values` before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@pytest.mark.parametrize("attention_type", DESIGNS)
def test_left_padded_batch_equals_each_prompt_alone(make_model, attention_type):
    model = make_model(attention_type)
    batch = prompts()
    ids, mask = left_pad(batch)
    together = greedy(model, ids, mask)
    assert together.shape == (len(batch), ids.shape[1] + NEW)
    assert torch.equal(together[:, : ids.shape[1]], ids)
    for row, prompt in enumerate(batch):
        alone = greedy(model, prompt[None], torch.ones(1, len(prompt), dtype=torch.long))
        assert torch.equal(together[row, ids.shape[1] :], alone[0, len(prompt) :]), f"prompt {row}"
    # the new tokens are not all one token repeated: the model is really conditioning on the prompt
    assert len(set(together[:, ids.shape[1] :].flatten().tolist())) > NEW


@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "leftpad"])
@pytest.mark.parametrize("attention_type", DESIGNS)
def test_static_cache_equals_dynamic_cache(make_model, attention_type, padded):
    model = make_model(attention_type)
    ids, mask = left_pad(prompts() if padded else prompts(lengths=(7, 7, 7)))
    kwargs = dict(return_dict_in_generate=True, output_scores=True)
    dynamic = greedy(model, ids, mask, cache_implementation="dynamic", **kwargs)  # hf_attn's default is static
    static = greedy(model, ids, mask, cache_implementation="static", **kwargs)
    assert isinstance(cache_of(dynamic), DynamicCache) and isinstance(cache_of(static), StaticCache)
    assert torch.equal(static.sequences, dynamic.sequences)
    assert_close(torch.stack(static.scores), torch.stack(dynamic.scores), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention_type", DESIGNS)
def test_seeded_sampling_is_reproducible(make_model, attention_type):
    model = make_model(attention_type)
    ids, mask = left_pad(prompts())

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True, top_k=0, pad_token_id=PAD)

    first, again, other = sample(0), sample(0), sample(1)
    assert first.shape == (3, ids.shape[1] + NEW)
    assert torch.equal(first[:, : ids.shape[1]], ids)
    assert first.min() >= 0 and first.max() < model.config.vocab_size
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, greedy(model, ids, mask))


@pytest.mark.parametrize("attention_type", DESIGNS)
def test_beam_search_shapes(make_model, attention_type):
    model = make_model(attention_type)
    ids, mask = left_pad(prompts())
    out = greedy(
        model, ids, mask, num_beams=2, num_return_sequences=2, return_dict_in_generate=True, output_scores=True
    )
    assert out.sequences.shape == (6, ids.shape[1] + NEW)
    # each prompt's two beams follow it, and start with it
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids.repeat_interleave(2, dim=0))
    scores = out.sequences_scores.view(3, 2)
    assert torch.isfinite(scores).all() and (scores[:, 0] >= scores[:, 1]).all()  # best beam first
    assert not torch.equal(out.sequences[0::2], out.sequences[1::2])  # two distinct beams


@pytest.mark.parametrize("attention_type", DESIGNS)
def test_beam_search_with_cache_equals_without(make_model, attention_type):
    """Beams reorder the cache every step (Performer: its state); recomputing from scratch must agree."""
    model = make_model(attention_type)
    ids, mask = left_pad(prompts())
    kwargs = dict(num_beams=3, num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
    cached, fresh = greedy(model, ids, mask, **kwargs), greedy(model, ids, mask, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, fresh.sequences)
    assert_close(cached.sequences_scores, fresh.sequences_scores, rtol=1e-4, atol=1e-5)


def test_mla_beam_search_absorbed_equals_naive(make_model):
    absorbed = make_model("mla", mla_absorb="always")
    naive = make_model("mla", mla_absorb="never")
    ids, mask = left_pad(prompts())
    kwargs = dict(num_beams=2, num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
    a, n = greedy(absorbed, ids, mask, **kwargs), greedy(naive, ids, mask, **kwargs)
    assert torch.equal(a.sequences, n.sequences)
    assert_close(a.sequences_scores, n.sequences_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("attention_type", DESIGNS)
def test_kv_cache_elements_match_cache(make_model, attention_type, cache_implementation):
    model = make_model(attention_type)
    config = model.config
    ids, mask = left_pad(prompts())
    out = greedy(model, ids, mask, return_dict_in_generate=True, cache_implementation=cache_implementation)
    cache = cache_of(out)
    assert len(cache.layers) == config.num_hidden_layers
    batch, fed = ids.shape[0], out.sequences.shape[1] - 1  # the last token is never fed
    numel = sum(t.numel() for t in cache_tensors(cache))
    if config.attention_type == "performer":  # one state, static or dynamic
        assert numel == batch * config.kv_cache_elements(fed) > 0
        return
    # A static cache is allocated to its full length (a sliding one to its window); count slots, not tokens.
    slots = cache.layers[0].keys.shape[-2]
    assert numel / (batch * slots) == config.kv_cache_elements_per_token
    if cache_implementation == "dynamic":
        assert cache.get_seq_length() == fed
        assert numel == batch * config.kv_cache_elements(fed)
        assert slots == (fed if config.sliding_window is None else config.sliding_window - 1)


@pytest.mark.parametrize("attention_type", ["gqa", "mla", "performer", "swa"])
def test_text_generation_pipeline(make_model, byte_tokenizer, attention_type):
    tok = byte_tokenizer
    model = make_model(
        attention_type, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    prompt = "In the beginning"
    text = generator(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]

    ids = tok(prompt, return_tensors="pt")
    assert ids.input_ids.shape[1] == len(prompt.encode())  # byte-level, no merges
    new = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids.input_ids.shape[1] :]
    assert len(new) > 0
    continuation = tok.decode(new, skip_special_tokens=True)
    assert text.startswith(prompt)
    assert text == prompt + continuation
    assert len(text) > len(prompt)
    only_new = generator(prompt, max_new_tokens=12, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert only_new == continuation
