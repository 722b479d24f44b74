"""PEFT LoRA on every attention type: generation with an unmerged adapter equals the merged model, and a
LoRA fine-tune of a trained model on a new text lowers its loss, then saves, reloads and merges."""

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from hf_attn.cli.train import main as train_main
from hf_attn.integrations.lora import lora_target_modules

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("single_thread")
ATTENTION_TYPES = ["mha", "gqa", "mqa", "mla", "performer", "swa"]  # swa: sliding-window GQA (conftest)
# A text unlike the training corpus (the King James Bible), for the fine-tune.
NEW_TEXT = "".join(f"order {i}: {i % 7} crates of {['apples', 'pears', 'plums'][i % 3]} to dock {i % 5}.\n"
                   for i in range(400))  # fmt: skip


def with_adapter(model, seed: int = 1):
    """A LoRA (r=4) on the default targets with non-zero B, so the adapter changes the outputs."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(model.config),
                             init_lora_weights=False)  # fmt: skip
    return peft.get_peft_model(model, config).eval()


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_unmerged_adapter_generates_like_the_merged_model(make_model, attention_type):
    model = with_adapter(make_model(attention_type))
    names = [name.split(".") for name, _ in model.named_parameters() if ".lora_A." in name]
    targets = {parts[parts.index("lora_A") - 1] for parts in names}
    assert targets == set(lora_target_modules(model.config))  # every default target exists and is adapted
    prompt = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    unmerged = model.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    merged_model = model.merge_and_unload()
    merged = merged_model.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    assert torch.equal(unmerged, merged)


@pytest.mark.parametrize("absorb", ["always", "never"])
def test_mla_decode_honours_an_unmerged_adapter_on_kv_b_proj(make_model, absorb):
    """Both MLA decode paths (absorbed: the folded kv_b matrix; naive: per-head K/V) see the adapter."""
    model = with_adapter(make_model("mla", mla_absorb=absorb))
    assert type(model.base_model.model.model.layers[0].self_attn.kv_b_proj).__module__.startswith("peft")
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(2))

    def decode_logits(m):  # prefill 4 tokens, then one token per step through the cache
        cache = DynamicCache(config=m.config)
        with torch.no_grad():
            out = [m(input_ids=ids[:, :4], cache=cache, use_cache=True).logits]
            out += [m(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(4, 12)]
        return torch.cat(out, dim=1)  # (1, 12, V)

    unmerged = decode_logits(model)
    with torch.no_grad():
        full = model(input_ids=ids).logits
    merged = decode_logits(model.merge_and_unload())
    assert_close(unmerged, merged, rtol=1e-4, atol=1e-5)
    assert_close(unmerged, full, rtol=1e-4, atol=1e-5)


def lm_loss(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


@pytest.mark.parametrize("attention_type", ["gqa", "mla"])
def test_lora_fine_tune_lowers_loss_then_saves_loads_and_merges(tmp_path, attention_type):
    run = tmp_path / "run"
    train_main(["--output-dir", str(run), "--preset", "tiny", "--attention-type", attention_type,
                "--train-tokenizer-vocab", "400", "--max-chars", "40000", "--block-size", "32", "--batch-size", "8",
                "--max-steps", "20", "--eval-every", "20", "--save-every", "0", "--tracker", "none",
                "--progress", "false", "--sample-tokens", "2"])  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(run)
    ids = torch.tensor(tokenizer(NEW_TEXT)["input_ids"])
    blocks = ids[: len(ids) // 32 * 32].view(-1, 32)  # (N, 32)
    train_blocks, val_blocks = blocks[:-8], blocks[-8:]
    base = AutoModelForCausalLM.from_pretrained(run, trust_remote_code=True)
    before = lm_loss(base, val_blocks)

    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=lora_target_modules(base.config))
    model = peft.get_peft_model(base, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for step in range(60):
        batch = train_blocks[torch.randint(0, len(train_blocks), (8,), generator=torch.Generator().manual_seed(step))]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    after = lm_loss(model, val_blocks)
    assert after < before - 0.5, (before, after)  # nats per token: perplexity down by 40% or more

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    fresh = AutoModelForCausalLM.from_pretrained(run, trust_remote_code=True)
    assert lm_loss(fresh, val_blocks) == pytest.approx(before)  # the base weights were not touched
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        expected = model(input_ids=val_blocks).logits
        assert_close(reloaded(input_ids=val_blocks).logits, expected, rtol=1e-5, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        assert_close(merged(input_ids=val_blocks).logits, expected, rtol=1e-4, atol=1e-4)
