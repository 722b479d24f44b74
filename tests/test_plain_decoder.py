"""The benchmark's bare PyTorch decoder computes hf_attn's math: logits, loss and gradients equal
hf_attn's model and transformers' Llama with the same weights (what makes `bench_train.py`'s
hf_attn / plain ratio a measure of framework overhead and nothing else)."""

import pytest
import torch
from torch.testing import assert_close

from hf_attn import HfAttnConfig, to_llama
from hf_attn.tools.benchmarks.plain_decoder import NanoGPTStyleDecoder, PlainDecoder

pytestmark = pytest.mark.usefixtures("single_thread")

# sdpa against sdpa with the same op order on float32: the differences are summation-order noise.
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("attention_type", ["mha", "gqa", "mqa"])
def test_logits_and_loss_equal_hf_attn_and_llama(make_model, attention_type, tie):
    model = make_model(attention_type, tie_word_embeddings=tie)
    plain = PlainDecoder.from_hf_attn(model)
    llama = to_llama(model).eval()
    assert (plain.lm_head.weight is plain.model.embed_tokens.weight) == tie
    ids = torch.randint(0, model.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    ids_labels = ids.clone()
    ids_labels[0, :5] = -100  # ignored positions count in neither loss
    with torch.no_grad():
        ours = plain(ids, labels=ids_labels)
        theirs = model(input_ids=ids, labels=ids_labels, use_cache=False)
        reference = llama(input_ids=ids, labels=ids_labels, use_cache=False)
    assert ours.logits.abs().mean() > 0.3  # spread-out weights: a wrong position or head would show
    assert_close(ours.logits, theirs.logits, **TOL)
    assert_close(ours.logits, reference.logits, **TOL)
    assert_close(ours.loss, theirs.loss, **TOL)
    assert_close(ours.loss, reference.loss, **TOL)


@pytest.mark.parametrize("attention_bias", [False, True], ids=["nobias", "bias"])
def test_training_gradients_equal_hf_attn(make_model, attention_bias):
    model = make_model("mha", attention_bias=attention_bias, tie_word_embeddings=True).train()
    plain = PlainDecoder.from_hf_attn(model)
    assert plain.training
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    ours, theirs = plain(ids, labels=ids).loss, model(input_ids=ids, labels=ids).loss
    assert_close(ours, theirs, **TOL)
    ours.backward()
    theirs.backward()
    plain_params = dict(plain.named_parameters())
    for name, param in model.named_parameters():
        assert param.grad.abs().sum() > 0, name
        assert_close(plain_params[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("attention_type", ["mla", "performer"])
def test_other_designs_are_refused(make_model, attention_type):
    with pytest.raises(ValueError, match="attention_type"):
        PlainDecoder.from_hf_attn(make_model(attention_type))


def test_sliding_window_is_refused():
    with pytest.raises(ValueError, match="sliding_window"):
        PlainDecoder(HfAttnConfig.from_preset("tiny", sliding_window=8))


def test_nanogpt_style_is_causal_and_tied():
    config = HfAttnConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = NanoGPTStyleDecoder(config).eval()
    assert model.lm_head.weight is model.wte.weight
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % config.vocab_size
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert_close(a[:, :8], b[:, :8])  # positions before the change do not see it
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-3
