"""Shared fixtures: tiny models with well-spread random weights, and a tiny byte-level tokenizer."""

import os
import shutil
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hf_attn import ATTENTION_TYPES, HfAttnConfig

# Designs the model-wide tests run on: every attention type, plus sliding-window GQA as "swa". Its
# window of 6 is shorter than the tests' prompts, so the window really cuts context off.
SLIDING_WINDOW_DESIGN = {"attention_type": "gqa", "sliding_window": 6}
DESIGNS = (*ATTENTION_TYPES, "swa")


def entry_point(name: str) -> list[str]:
    """The command that `pip install` made for a [project.scripts] entry (hf-attn-train, ...)."""
    path = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    assert path, f"{name} is not installed: run `pip install -e .`"
    return [path]


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Fills every parameter with seeded noise, in place.

    The default init (std 0.02) makes attention almost uniform and logits almost zero, so two
    models that attend differently would still agree to 1e-5. With std 0.15 on width 64 the
    attention scores are O(1) and the logits O(1): a wrong mask, position or head shows up.
    Norm weights stay near 1 but not exactly 1, so a missing norm shows up too.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if "norm" in name:
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(std * noise)
    return model


@pytest.fixture(scope="module")
def single_thread():
    """Runs a module's tests on one torch thread, then restores the count.

    Tiny-model ops are too small to gain from intra-op threads, and where other processes hold the
    cores the threads spin against them (the MLA tests ran ~4x faster on one thread). Opt in with
    `pytestmark = pytest.mark.usefixtures("single_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_model():
    """Factory: `make_model("gqa", seed=0, attn_implementation="eager", **config_overrides)`.

    Builds the "tiny" preset through `AutoModelForCausalLM.from_config` (the public path), with
    randomized float32 weights, in eval mode. "swa" is sliding-window GQA (`SLIDING_WINDOW_DESIGN`).
    """

    def make(attention_type: str, seed: int = 0, attn_implementation: str | None = None, **overrides):
        design = SLIDING_WINDOW_DESIGN if attention_type == "swa" else {"attention_type": attention_type}
        config = HfAttnConfig.from_preset("tiny", **{**design, **overrides})
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        torch.manual_seed(seed)  # buffers drawn at init (Performer's random features) follow the seed too
        model = AutoModelForCausalLM.from_config(config, **kwargs)
        return randomize_(model, seed=seed).eval()

    return make


@pytest.fixture(scope="session")
def byte_tokenizer():
    """A 258-token byte-level tokenizer (256 bytes, eos, pad), built in memory with `tokenizers`."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


@pytest.fixture
def padded_batch():
    """Factory: `padded_batch((12, 9, 5), seed=0)` gives random ids (B, T) with left padding and their mask."""

    def make(lengths, seed: int = 0, vocab: int = 256):
        generator = torch.Generator().manual_seed(seed)
        width = max(lengths)
        ids = torch.randint(0, vocab, (len(lengths), width), generator=generator)
        mask = torch.zeros_like(ids)
        for row, length in enumerate(lengths):
            mask[row, width - length :] = 1
        return ids, mask

    return make


@pytest.fixture
def check_training_step():
    """Checker: `check_training_step(model, export, ids)` with `export` one of hf_attn's `to_llama` / `to_deepseek_v3`.

    Checks, against the exported transformers model with the same weights, that train-mode logits
    equal eval-mode logits and that the loss and every parameter's gradient match.
    """

    def check(model, export, ids):
        with torch.no_grad():
            eval_logits = model(input_ids=ids, use_cache=False).logits
        model.train()
        reference = export(model).train()
        ours = model(input_ids=ids, labels=ids, use_cache=False)
        theirs = reference(input_ids=ids, labels=ids, use_cache=False)
        assert_close(ours.logits.detach(), eval_logits, rtol=1e-4, atol=1e-5)
        assert_close(ours.loss, theirs.loss, rtol=1e-4, atol=1e-5)
        ours.loss.backward()
        theirs.loss.backward()
        reference_params = dict(reference.named_parameters())
        for name, param in model.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            assert_close(
                param.grad, reference_params[name].grad, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
            )

    return check


def tiny_llama(seed: int, std: float = 0.12, **overrides):
    """A tiny random transformers LlamaForCausalLM shaped like SmolLM2: GQA (4 heads, 2 K/V heads, head_dim 16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rope_theta=1e4, rms_norm_eps=1e-5,
    )  # fmt: skip
    return randomize_(LlamaForCausalLM(LlamaConfig(**{**fields, **overrides})), seed=seed, std=std).eval()
