"""Sliding-window attention (`sliding_window` on MHA/GQA/MQA) against transformers' Mistral, and its bounded cache."""

import pytest
import torch
from torch.testing import assert_close
from transformers import DynamicCache, MistralConfig, MistralForCausalLM, StaticCache
from transformers.cache_utils import DynamicSlidingWindowLayer, StaticSlidingWindowLayer

from hf_attn import to_llama, to_mistral
from hf_attn.utils import HfAttnError, cache_bytes

pytestmark = pytest.mark.usefixtures("single_thread")

WINDOW = 6
# Same float32 ops in another order (sdpa vs eager, a cache vs one pass); logits are O(1).
TOL = dict(rtol=1e-4, atol=1e-5)


def mistral_twin(model) -> MistralForCausalLM:
    """transformers' Mistral, configured by hand (not through hf_attn's exporter), with `model`'s weights."""
    c = model.config
    config = MistralConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_parameters["rope_theta"]},
        sliding_window=c.sliding_window,
        tie_word_embeddings=c.tie_word_embeddings,
    )
    mistral = MistralForCausalLM(config)
    mistral.load_state_dict(model.state_dict(), strict=True)  # Llama's parameter names: no renaming
    return mistral.eval()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("attention_type", ["mha", "gqa", "mqa"])
def test_mistral_parity_full_pass(make_model, padded_batch, attention_type, attn_implementation):
    model = make_model(attention_type, sliding_window=WINDOW, attn_implementation=attn_implementation)
    mistral = mistral_twin(model)
    ids, mask = padded_batch((20, 15, 9))
    with torch.no_grad():
        ours, theirs = model(ids).logits, mistral(ids).logits
        assert ours.abs().mean() > 0.3  # spread-out weights: a wrong window would show
        assert_close(ours, theirs, **TOL)
        valid = mask.bool()  # padded rows are unspecified
        assert_close(
            model(ids, attention_mask=mask).logits[valid], mistral(ids, attention_mask=mask).logits[valid], **TOL
        )
        # the window matters: the same weights with full attention compute something else past the window
        full = to_llama(make_model(attention_type)).eval()
        full.load_state_dict(model.state_dict())
        assert (full(ids).logits[:, WINDOW:] - ours[:, WINDOW:]).abs().max() > 1e-2
        assert_close(full(ids).logits[:, :WINDOW], ours[:, :WINDOW], **TOL)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_mistral_parity_cached_greedy_decode(make_model, padded_batch, cache_implementation):
    model = make_model("gqa", sliding_window=WINDOW)
    mistral = mistral_twin(model)
    ids, mask = padded_batch((12, 9, 4), seed=1)
    kwargs = dict(
        attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
        output_scores=True, cache_implementation=cache_implementation,
    )  # fmt: skip
    ours, theirs = model.generate(ids, **kwargs), mistral.generate(ids, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert_close(torch.stack(ours.scores), torch.stack(theirs.scores), **TOL)
    assert len(set(ours.sequences[:, ids.shape[1] :].flatten().tolist())) > 10  # not one token repeated


def test_dynamic_cache_stops_growing_at_the_window(make_model):
    model = make_model("gqa", sliding_window=WINDOW)
    config = model.config
    ids = torch.randint(0, 256, (1, 3 * WINDOW))
    cache = DynamicCache(config=config)
    assert all(isinstance(layer, DynamicSlidingWindowLayer) for layer in cache.layers)
    sizes, stepped = [], []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            stepped.append(model(ids[:, t : t + 1], cache=cache, use_cache=True).logits)
            sizes.append(cache_bytes(cache))
        full = model(ids, use_cache=False).logits
    per_token = 4 * config.kv_cache_elements_per_token  # float32
    # grows one token at a time until it holds the window - 1 keys the next query needs, then stays
    assert sizes == [per_token * min(t + 1, WINDOW - 1) for t in range(len(sizes))]
    assert sizes == [4 * config.kv_cache_elements(t + 1) for t in range(len(sizes))]
    assert cache.get_seq_length() == ids.shape[1]  # positions still count every token
    assert_close(torch.cat(stepped, dim=1), full, **TOL)  # with the same mask: cached decode == full pass


def test_static_cache_allocates_the_window_only(make_model):
    model = make_model("gqa", sliding_window=WINDOW)
    cache = StaticCache(config=model.config, max_cache_len=64)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        first = model(ids[:, :9], cache=cache, use_cache=True).logits
        rest = [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(9, 20)]
        full = model(ids, use_cache=False).logits
    assert all(isinstance(layer, StaticSlidingWindowLayer) for layer in cache.layers)
    assert all(layer.keys.shape[-2] == WINDOW for layer in cache.layers)  # not 64
    assert_close(torch.cat([first, *rest], dim=1), full, **TOL)


def test_to_mistral_matches_and_llama_export_is_refused(make_model, padded_batch):
    model = make_model("mqa", sliding_window=WINDOW)
    exported = to_mistral(model)
    assert type(exported) is MistralForCausalLM and exported.config.sliding_window == WINDOW
    ids, _ = padded_batch((14, 14))
    with torch.no_grad():
        assert_close(exported(ids).logits, model(ids).logits, **TOL)
    with pytest.raises(HfAttnError, match="sliding_window=6.*to_mistral"):
        to_llama(model)
