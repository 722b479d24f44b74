"""The model against transformers' Llama, and against itself: cache vs full pass, eager vs sdpa, dtypes."""

import pytest
import torch
from conftest import DESIGNS
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, DynamicCache, LlamaForCausalLM

from hf_attn import HfAttnConfig, HfAttnForCausalLM, to_llama
from hf_attn.tools.export.to_transformers import llama_config

pytestmark = pytest.mark.usefixtures("single_thread")

GQA_FAMILY = ("mha", "gqa", "mqa")
# Absorbed MLA decode and sdpa reorder float32 sums; logits are O(1), so this is still ~1e-5 relative.
TOL = dict(rtol=1e-4, atol=1e-5)


@torch.no_grad()
def logits_of(model, ids, mask=None, **kwargs):
    return model(input_ids=ids, attention_mask=mask, **kwargs).logits


# ----------------------------------------------------------------------------- parity with Llama


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("attention_type", GQA_FAMILY)
def test_llama_parity(make_model, padded_batch, attention_type, tie):
    model = make_model(attention_type, tie_word_embeddings=tie)
    llama = to_llama(model)
    assert type(llama) is LlamaForCausalLM
    assert llama.config.num_key_value_heads == model.config.num_key_value_heads
    assert (llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()) == tie
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) == tie

    ids, mask = padded_batch((12, 9, 5))
    for use_cache in (False, True):
        ours = logits_of(model, ids, use_cache=use_cache)
        assert ours.abs().mean() > 0.3  # weights are spread out enough for the comparison to mean something
        assert_close(ours, logits_of(llama, ids, use_cache=use_cache), **TOL)
        # Padded rows attend to nothing real and are unspecified; compare the real positions.
        valid = mask.bool()
        assert_close(
            logits_of(model, ids, mask, use_cache=use_cache)[valid],
            logits_of(llama, ids, mask, use_cache=use_cache)[valid],
            **TOL,
        )


@pytest.mark.parametrize("attention_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("attention_type", GQA_FAMILY)
def test_llama_parity_in_training(make_model, padded_batch, check_training_step, attention_type, attention_bias):
    """In train mode (dropout, no cache) the loss and every gradient must still match Llama."""
    model = make_model(attention_type, attention_bias=attention_bias)
    ids, _ = padded_batch((12, 12))
    check_training_step(model, to_llama, ids)


@pytest.mark.parametrize("attention_type", GQA_FAMILY)
def test_llama_state_dict_names_and_shapes_equal(make_model, attention_type):
    model = make_model(attention_type)
    # Built independently from the translated config, not via to_llama's strict load.
    llama = LlamaForCausalLM(llama_config(model.config))
    ours = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in llama.state_dict().items()}
    assert ours == theirs
    assert any(".self_attn.k_proj." in k for k in ours)


def test_parity_comparison_is_sensitive(make_model, padded_batch):
    """A single perturbed weight must break the parity check, or the check proves nothing."""
    model = make_model("gqa")
    llama = to_llama(model)
    ids, _ = padded_batch((12, 9, 5))
    assert_close(logits_of(model, ids), logits_of(llama, ids), **TOL)
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight[3, 5] += 0.5
    diff = (logits_of(model, ids) - logits_of(llama, ids)).abs().max()
    assert diff > 1e-3
    # and the copy was independent: the Llama weight did not move with ours
    assert not torch.equal(
        model.model.layers[1].self_attn.k_proj.weight, llama.model.layers[1].self_attn.k_proj.weight
    )


def test_rope_is_relative_and_positions_matter(make_model, padded_batch):
    """A constant shift of positions keeps the logits (RoPE is relative); a reordering changes them."""
    model = make_model("mha")
    ids, _ = padded_batch((12, 9, 5))
    shifted = torch.arange(3, 3 + ids.shape[1]).unsqueeze(0)
    diff = (
        (logits_of(model, ids, use_cache=False) - logits_of(model, ids, position_ids=shifted, use_cache=False))
        .abs()
        .max()
    )
    assert diff < 1e-3  # RoPE is relative: a constant shift keeps q.k (up to rounding)
    scrambled = torch.arange(ids.shape[1]).flip(0).unsqueeze(0)
    diff = (
        (logits_of(model, ids, use_cache=False) - logits_of(model, ids, position_ids=scrambled, use_cache=False))
        .abs()
        .max()
    )
    assert diff > 1e-2


# ----------------------------------------------------------------------------- cache and kernels


@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "leftpad"])
@pytest.mark.parametrize("attention_type", DESIGNS)
def test_cached_step_decode_equals_full_pass(make_model, padded_batch, attention_type, padded):
    model = make_model(attention_type)
    ids, mask = padded_batch((12, 9, 5))
    if not padded:
        mask = torch.ones_like(ids)
    full = logits_of(model, ids, mask, use_cache=False)

    prefill = 5
    if attention_type == "performer":
        # transformers' recurrent-layer mask treats a one-token step as never padding (generate never feeds a
        # pad there), so the prefill covers every row's left padding
        prefill = max(prefill, int((~mask.bool()).sum(1).max()) + 1)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(input_ids=ids[:, :prefill], attention_mask=mask[:, :prefill], cache=cache, use_cache=True)
        steps = [out.logits]
        for t in range(prefill, ids.shape[1]):
            out = model(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    assert out.cache is cache
    if model.config.attention_type != "performer":  # Performer's state has no length (tests/test_performer.py)
        assert cache.get_seq_length() == ids.shape[1]
    stepped = torch.cat(steps, dim=1)
    valid = mask.bool()
    assert_close(stepped[valid], full[valid], **TOL)


@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "leftpad"])
@pytest.mark.parametrize("attention_type", [t for t in DESIGNS if t != "performer"])  # Performer has no kernel choice
def test_eager_equals_sdpa(make_model, padded_batch, attention_type, padded):
    eager = make_model(attention_type, attn_implementation="eager")
    sdpa = make_model(attention_type, attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    # the kernel choice must have reached the attention modules, or this compares sdpa with sdpa
    assert eager.model.layers[0].self_attn.config._attn_implementation == "eager"
    assert sdpa.model.layers[0].self_attn.config._attn_implementation == "sdpa"

    ids, mask = padded_batch((20, 14, 7))  # > 16 tokens, so a cached MLA prefill runs naive too
    if not padded:
        mask = torch.ones_like(ids)
    valid = mask.bool()
    for use_cache in (False, True):
        assert_close(
            logits_of(eager, ids, mask, use_cache=use_cache)[valid],
            logits_of(sdpa, ids, mask, use_cache=use_cache)[valid],
            **TOL,
        )


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "attention_type, overrides",
    [
        ("mha", {}),
        ("mha", dict(attention_bias=True)),
        ("gqa", {}),
        ("gqa", dict(attention_bias=True, head_dim=32)),
        ("mqa", {}),
        ("mqa", dict(attention_bias=True)),
        ("mla", {}),
        ("mla", dict(attention_bias=True)),
        ("mla", dict(q_lora_rank=24)),
        ("mla", dict(q_lora_rank=24, attention_bias=True, kv_lora_rank=20, qk_rope_head_dim=6, v_head_dim=12)),
        ("performer", {}),
        ("performer", dict(attention_bias=True, num_key_value_heads=2)),
    ],
)
def test_attention_parameters_per_layer_matches_module(attention_type, overrides):
    config = HfAttnConfig.from_preset("tiny", attention_type=attention_type, **overrides)
    model = HfAttnForCausalLM(config)
    for layer in model.model.layers:
        counted = sum(p.numel() for p in layer.self_attn.parameters())
        assert config.attention_parameters_per_layer == counted


# ----------------------------------------------------------------------------- dtypes and loading


@pytest.mark.parametrize("attention_type", ["gqa", "mla", "performer", "swa"])
def test_from_pretrained_bfloat16(make_model, padded_batch, attention_type, tmp_path):
    model = make_model(attention_type)
    model.save_pretrained(tmp_path)
    ids, mask = padded_batch((12, 9, 5))
    reference = logits_of(model, ids, mask)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert type(loaded) is HfAttnForCausalLM
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    logits = logits_of(loaded, ids, mask)
    assert logits.dtype == torch.bfloat16
    valid = mask.bool()
    # bf16 keeps ~3 significant digits: same function, coarser numbers. A wrong model is off by ~100%.
    error = (logits[valid].float() - reference[valid]).norm() / reference[valid].norm()
    assert error < 0.04, error  # measured ~0.015-0.018

    # and in float32 the round trip is exact
    exact = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert {p.dtype for p in exact.parameters()} == {torch.float32}
    assert torch.equal(logits_of(exact, ids, mask), reference)


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize("attention_type", ["gqa", "mla"])
def test_prompt_longer_than_max_positions_raises(make_model, attention_type):
    model = make_model(attention_type, max_position_embeddings=32)
    ids = torch.randint(0, 256, (1, 32))
    assert logits_of(model, ids).shape == (1, 32, 256)  # exactly at the limit is fine
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        logits_of(model, torch.randint(0, 256, (1, 33)))
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        logits_of(model, torch.randint(0, 256, (1, 33)), use_cache=False)


@pytest.mark.parametrize("attention_type", ["gqa", "mla"])
def test_generate_past_max_positions_raises(make_model, attention_type):
    model = make_model(attention_type, max_position_embeddings=32)
    ids = torch.randint(0, 256, (1, 28))
    # 28 prompt + 6 new: the 6th new token would be predicted at position 32 (0-based), which does not exist
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    # 28 + 5 still fits: the last generated token is predicted at position 31 and never fed back
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 33)


# ----------------------------------------------------------------------------- training


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention_type", ["gqa", "mla", "performer", "swa"])
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_gradient_checkpointing_same_grads(make_model, padded_batch, attention_type):
    model = make_model(attention_type).train()
    ids, _ = padded_batch((12, 12))
    loss, grads = _grads(model, ids)

    calls = []
    # A hook inside the layer (layer hooks stay outside the checkpoint by design)
    model.model.layers[0].self_attn.register_forward_hook(lambda *args: calls.append(1))
    model.gradient_checkpointing_enable()
    ckpt_loss, ckpt_grads = _grads(model, ids)
    assert len(calls) == 2  # the layer ran again in backward: checkpointing was really on

    assert_close(ckpt_loss, loss, **TOL)
    assert grads.keys() == ckpt_grads.keys()
    assert all(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        assert_close(ckpt_grads[name], grads[name], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
