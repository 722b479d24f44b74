"""MLA: parity with DeepseekV3, absorbed decode equals naive decode, and a latent-only cache."""

from collections import Counter

import pytest
import torch
from torch.testing import assert_close
from transformers import DeepseekV3ForCausalLM, DynamicCache, StaticCache

from hf_attn import to_deepseek_v3
from hf_attn.model.attention_mla import ABSORB_MAX_QUERY_LEN, HfAttnMLAttention
from hf_attn.tools.export.to_transformers import deepseek_v3_config

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = dict(rtol=1e-4, atol=1e-5)


@torch.no_grad()
def logits_of(model, ids, mask=None, **kwargs):
    return model(input_ids=ids, attention_mask=mask, **kwargs).logits


@torch.no_grad()
def chunked_logits(model, ids, mask, sizes):
    """Feeds `ids` through one DynamicCache in chunks of `sizes`; returns the logits for all positions."""
    cache = DynamicCache(config=model.config)
    logits, start = [], 0
    for size in sizes:
        end = start + size
        out = model(input_ids=ids[:, start:end], attention_mask=mask[:, :end], cache=cache, use_cache=True)
        logits.append(out.logits)
        start = end
    assert start == ids.shape[1] == cache.get_seq_length()
    return torch.cat(logits, dim=1)


@pytest.fixture
def mla_paths(monkeypatch):
    """Counts calls of the absorbed and the naive attention path, to prove which one a test ran."""
    counts = Counter()
    for path in ("_absorbed_attention", "_naive_attention"):
        original = getattr(HfAttnMLAttention, path)

        def counted(self, *args, _original=original, _path=path, **kwargs):
            counts[_path.strip("_").split("_")[0]] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(HfAttnMLAttention, path, counted)
    return counts


# ----------------------------------------------------------------------------- parity with DeepseekV3


@pytest.mark.parametrize("attention_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("q_lora_rank", [None, 24], ids=["q_full", "q_lora"])
def test_deepseek_v3_parity(make_model, padded_batch, mla_paths, q_lora_rank, attention_bias):
    model = make_model("mla", q_lora_rank=q_lora_rank, attention_bias=attention_bias)
    reference = to_deepseek_v3(model)
    assert type(reference) is DeepseekV3ForCausalLM
    assert reference.config.q_lora_rank == q_lora_rank

    # 20 tokens: a cached prefill takes the naive path; 9 tokens: it takes the absorbed path
    for lengths in ((20, 14, 6), (9, 7, 3)):
        ids, mask = padded_batch(lengths)
        valid = mask.bool()
        for use_cache in (False, True):
            ours = logits_of(model, ids, use_cache=use_cache)
            assert ours.abs().mean() > 0.3
            assert_close(ours, logits_of(reference, ids, use_cache=use_cache), **TOL)
            assert_close(
                logits_of(model, ids, mask, use_cache=use_cache)[valid],
                logits_of(reference, ids, mask, use_cache=use_cache)[valid],
                **TOL,
            )
    assert mla_paths["absorbed"] > 0 and mla_paths["naive"] > 0  # both paths were compared


@pytest.mark.parametrize("q_lora_rank", [None, 24], ids=["q_full", "q_lora"])
def test_deepseek_v3_parity_in_training(make_model, padded_batch, check_training_step, q_lora_rank):
    """Train mode takes its own code path: loss and every gradient must still match DeepseekV3."""
    model = make_model("mla", q_lora_rank=q_lora_rank, attention_bias=True)
    ids, _ = padded_batch((12, 12))
    check_training_step(model, to_deepseek_v3, ids)


@pytest.mark.parametrize("q_lora_rank", [None, 24], ids=["q_full", "q_lora"])
def test_deepseek_v3_state_dict_names_and_shapes_equal(make_model, q_lora_rank):
    model = make_model("mla", q_lora_rank=q_lora_rank, attention_bias=True)
    # Built independently from the translated config, not via to_deepseek_v3's strict load.
    reference = DeepseekV3ForCausalLM(deepseek_v3_config(model.config))
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}
    assert any(".self_attn.kv_b_proj." in k for k in ours)
    assert any(".self_attn.q_a_proj." in k for k in ours) == (q_lora_rank is not None)


def test_deepseek_v3_parity_is_sensitive(make_model, padded_batch):
    model = make_model("mla")
    reference = to_deepseek_v3(model)
    ids, _ = padded_batch((12,))
    assert_close(logits_of(model, ids), logits_of(reference, ids), **TOL)
    with torch.no_grad():
        model.model.layers[0].self_attn.kv_b_proj.weight[7, 3] += 0.5
    assert (logits_of(model, ids) - logits_of(reference, ids)).abs().max() > 1e-3


# ----------------------------------------------------------------------------- absorbed vs naive


def _same_weight_pair(make_model, modes, **overrides):
    models = [make_model("mla", mla_absorb=mode, **overrides) for mode in modes]
    for other in models[1:]:
        for (name, a), (_, b) in zip(models[0].state_dict().items(), other.state_dict().items()):
            assert torch.equal(a, b), name
    return models


@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "leftpad"])
@pytest.mark.parametrize("q_lora_rank", [None, 24], ids=["q_full", "q_lora"])
def test_absorbed_step_decode_equals_naive(make_model, padded_batch, mla_paths, q_lora_rank, padded):
    absorbed, naive = _same_weight_pair(make_model, ("always", "never"), q_lora_rank=q_lora_rank)
    ids, mask = padded_batch((11, 8, 4))
    if not padded:
        mask = torch.ones_like(ids)
    sizes = [4] + [1] * 7  # prefill 4, then 7 single-token steps
    valid = mask.bool()

    stepped_absorbed = chunked_logits(absorbed, ids, mask, sizes)
    assert mla_paths == {"absorbed": 2 * len(sizes)}  # 2 layers, every call absorbed
    stepped_naive = chunked_logits(naive, ids, mask, sizes)
    assert mla_paths == {"absorbed": 2 * len(sizes), "naive": 2 * len(sizes)}

    assert_close(stepped_absorbed[valid], stepped_naive[valid], **TOL)
    assert_close(stepped_absorbed[valid], logits_of(naive, ids, mask, use_cache=False)[valid], **TOL)


@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "leftpad"])
def test_auto_cached_decode_equals_full_pass(make_model, padded_batch, mla_paths, padded):
    (model,) = _same_weight_pair(make_model, ("auto",))
    ids, mask = padded_batch((24, 21, 9))
    if not padded:
        mask = torch.ones_like(ids)
    prefill = ABSORB_MAX_QUERY_LEN + 4  # long enough that "auto" expands it
    sizes = [prefill] + [1] * (ids.shape[1] - prefill)

    full = logits_of(model, ids, mask, use_cache=False)
    assert mla_paths == {"naive": 2}
    stepped = chunked_logits(model, ids, mask, sizes)
    # prefill naive in both layers, then every decode step absorbed in both layers
    assert mla_paths == {"naive": 2 + 2, "absorbed": 2 * (len(sizes) - 1)}
    valid = mask.bool()
    assert_close(stepped[valid], full[valid], **TOL)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "leftpad"])
def test_absorbed_chunk_equals_naive(make_model, padded_batch, mla_paths, padded, attn_implementation):
    """A 4-token chunk after a 6-token prefill: inside the chunk the mask must still be causal."""
    absorbed, naive = _same_weight_pair(make_model, ("always", "never"), attn_implementation=attn_implementation)
    ids, mask = padded_batch((10, 8, 5))
    if not padded:
        mask = torch.ones_like(ids)
    valid = mask.bool()

    chunk_absorbed = chunked_logits(absorbed, ids, mask, [6, 4])
    chunk_naive = chunked_logits(naive, ids, mask, [6, 4])
    assert mla_paths == {"absorbed": 4, "naive": 4}
    assert_close(chunk_absorbed[valid], chunk_naive[valid], **TOL)
    assert_close(chunk_absorbed[valid], logits_of(naive, ids, mask, use_cache=False)[valid], **TOL)

    # Causality inside the chunk, directly: changing the chunk's last token changes only the last position.
    future = ids.clone()
    future[:, -1] = (future[:, -1] + 1) % 256
    changed = chunked_logits(absorbed, future, mask, [6, 4])
    assert_close(changed[:, :-1][valid[:, :-1]], chunk_absorbed[:, :-1][valid[:, :-1]], **TOL)
    assert (changed[:, -1] - chunk_absorbed[:, -1]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- the latent cache


def test_dynamic_cache_holds_only_latent_and_rope_key(make_model, padded_batch):
    model = make_model("mla", q_lora_rank=24)
    config = model.config
    ids, mask = padded_batch((13, 10))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    cache = out.cache
    assert isinstance(cache, DynamicCache)
    batch, seq = ids.shape
    assert len(cache.layers) == config.num_hidden_layers
    entry = config.kv_lora_rank + config.qk_rope_head_dim
    for layer in cache.layers:
        # per-head K/V (B, heads, S, nope + rope) are never stored: one [c_KV | k^R] "head", no values
        assert layer.keys.shape == (batch, 1, seq, entry)
        assert layer.values.shape == (batch, 1, seq, 0)
    per_token = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers) / (batch * seq)
    assert per_token == config.kv_cache_elements_per_token == (config.kv_lora_rank + config.qk_rope_head_dim) * 2

    # and what is stored is the normalized latent c_KV and the rotated k^R of layer 0
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
        latent, k_rope = attn.kv_a_proj_with_mqa(hidden).split([config.kv_lora_rank, config.qk_rope_head_dim], dim=-1)
        cos, sin = model.model.rotary_emb(hidden, torch.arange(seq).unsqueeze(0))  # (1, S, rope)
        first, second = k_rope.chunk(2, dim=-1)  # non-interleaved RoPE, written out independently
        rotated = k_rope * cos + torch.cat((-second, first), dim=-1) * sin  # (B, S, rope)
        expected_latent = attn.kv_a_layernorm(latent).unsqueeze(1)  # (B, 1, S, r)
        expected_rope = rotated.unsqueeze(1)  # (B, 1, S, rope)
    assert_close(cache.layers[0].keys, torch.cat((expected_latent, expected_rope), dim=-1), **TOL)


# With sdpa, transformers passes no mask for a prefill into an empty StaticCache (sdpa's is_causal
# is upper-left aligned); the absorbed path must then not let the prompt see later or empty slots.
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_static_cache_prefill_and_decode_equal_full_pass(make_model, padded_batch, mla_paths, attn_implementation):
    """A short prefill into a StaticCache takes the absorbed path ("auto"); it must equal the full pass."""
    model = make_model("mla", attn_implementation=attn_implementation)
    ids, _ = padded_batch((9, 9))
    full = logits_of(model, ids, use_cache=False)
    cache = StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        prefill = model(
            input_ids=ids[:, :7], attention_mask=torch.ones_like(ids[:, :7]), cache=cache, use_cache=True
        ).logits
        steps = [
            model(
                input_ids=ids[:, t : t + 1],
                attention_mask=torch.ones_like(ids[:, : t + 1]),
                cache=cache,
                use_cache=True,
            ).logits
            for t in (7, 8)
        ]
    assert mla_paths == {"naive": 2, "absorbed": 2 * 3}  # full pass naive; prefill and steps absorbed
    assert_close(prefill, full[:, :7], **TOL)
    assert_close(torch.cat(steps, dim=1), full[:, 7:], **TOL)


def test_static_cache_holds_only_latent_and_rope_key(make_model, padded_batch):
    model = make_model("mla")
    config = model.config
    ids, mask = padded_batch((7, 5))
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        cache_implementation="static",
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    cache = getattr(out, "cache", None) or out.past_key_values
    assert isinstance(cache, StaticCache)
    max_len = cache.layers[0].keys.shape[2]
    assert max_len >= ids.shape[1] + 3
    for layer in cache.layers:
        assert layer.keys.shape == (2, 1, max_len, config.kv_lora_rank + config.qk_rope_head_dim)
        assert layer.values.shape == (2, 1, max_len, 0)
    # Every token but the last generated one was written, as the same layer-0 latent a DynamicCache
    # holds (layer 0's latent depends only on the token); the remaining slots are still empty.
    filled = out.sequences.shape[1] - 1
    with torch.no_grad():
        dynamic = model(input_ids=out.sequences[:, :filled], use_cache=True).cache
    # The latent part only: the RoPE part depends on the position ids generate derives from the padding.
    latent = slice(0, config.kv_lora_rank)
    assert_close(cache.layers[0].keys[:, :, :filled, latent], dynamic.layers[0].keys[..., latent], **TOL)
    assert cache.layers[0].keys[:, :, filled:].abs().sum() == 0
    assert cache.layers[0].keys[:, :, :filled].abs().amin(dim=-1).ne(0).any()


def test_latent_norms_follow_rms_norm_eps_and_old_checkpoints_keep_theirs(make_model, tmp_path):
    """DeepseekV3's latent norms use the model's rms_norm_eps; a config.json from before `mla_latent_norm_eps`
    existed keeps the 1e-6 its checkpoint was trained with."""
    import json

    from transformers import AutoModelForCausalLM

    from hf_attn.utils import HfAttnError

    model = make_model("mla", rms_norm_eps=1e-5, q_lora_rank=16)
    attention = model.model.layers[0].self_attn
    assert model.config.mla_latent_norm_eps == 1e-5
    assert attention.kv_a_layernorm.eps == 1e-5 and attention.q_a_layernorm.eps == 1e-5
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert_close(to_deepseek_v3(model)(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)

    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["mla_latent_norm_eps"] == 1e-5
    del config["mla_latent_norm_eps"]  # as every MLA checkpoint saved before the field
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert old.config.mla_latent_norm_eps == 1e-6 and old.model.layers[0].self_attn.kv_a_layernorm.eps == 1e-6
    with pytest.raises(HfAttnError, match="mla_latent_norm_eps=1e-06 with rms_norm_eps=1e-05"):
        to_deepseek_v3(old)
