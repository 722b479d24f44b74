"""Shared fixtures: tiny models with well-spread random weights, and a tiny byte-level tokenizer."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hf_attn import HfAttnConfig

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

    Tiny-model ops are too small to gain from intra-op threads, and on a shared 2-core machine the
    threads spin against other processes: the MLA tests run ~4x faster on one thread. Opt in with
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
    randomized float32 weights, in eval mode.
    """

    def make(attention_type: str, seed: int = 0, attn_implementation: str | None = None, **overrides):
        config = HfAttnConfig.from_preset("tiny", attention_type=attention_type, **overrides)
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
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

