"""A design added in this file alone: MHA with QK-norm, registered through `register_attention_design`.

Nothing outside this file knows it: every tool reads what the design says of itself, so the model trains
(through the comparison, which records it like any variant), caches, decodes and generates; its cache
formula matches the bytes measured; the comparison's report, sweep and Hub card count it; the exporters
refuse it in one line; its LoRA targets are the ones it names. The design is unregistered at the end.
"""

import json
import os

import pytest
import torch
from conftest import randomize_
from torch import nn
from transformers import AutoTokenizer, DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.model.attention import ATTENTION_PROJECTIONS, HfAttnAttention, eager_attention_forward
from hf_attn.model.attention_utils import (
    ATTENTION_DESIGNS,
    AttentionDesign,
    apply_rotary,
    register_attention_design,
)
from hf_attn.utils import HfAttnError, cache_bytes

pytestmark = pytest.mark.usefixtures("single_thread")
NAME = "mha-qknorm"
TOKENIZER_DIR = os.path.join(os.path.dirname(__file__), "..", "tokenizer")


class QKNormAttention(HfAttnAttention):
    """MHA whose queries and keys are RMS-normed per head before RoPE (as OLMo 2 and Qwen3 do)."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        batch, seq_len, _ = hidden_states.shape
        cos, sin = position_embeddings
        shape = (batch, seq_len, -1, self.head_dim)
        query = apply_rotary(self.q_norm(self.q_proj(hidden_states).view(shape)), cos, sin)
        key = apply_rotary(self.k_norm(self.k_proj(hidden_states).view(shape)), cos, sin)
        value = self.v_proj(hidden_states).view(shape)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = interface(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        return self.o_proj(output.reshape(batch, seq_len, -1)), weights


class QKNormDesign(AttentionDesign):
    """MHA with QK-norm: one K/V head per query head, queries and keys RMS-normed per head."""

    name = NAME
    attention_class = QKNormAttention
    export_formats = ()  # no transformers class has these norms in Llama's layout

    def derive(self, config) -> None:
        if config.num_key_value_heads is None:
            config.num_key_value_heads = config.num_attention_heads
        if config.num_key_value_heads != config.num_attention_heads:
            raise ValueError(f"num_key_value_heads must equal num_attention_heads for {NAME!r}.")

    def cache_elements(self, config, seq_len: int) -> int:
        return 2 * config.num_key_value_heads * config.head_dim * seq_len

    def attention_parameters(self, config) -> int:
        d, q = config.hidden_size, config.num_attention_heads * config.head_dim
        return 4 * d * q + 2 * config.head_dim  # q/k/v/o, and the two norms' weights

    def lora_targets(self, config) -> tuple[str, ...]:
        return ATTENTION_PROJECTIONS

    def describe(self, config) -> str:
        return f"kv {config.num_key_value_heads}, qk-norm"


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The design, registered for this module's tests only."""
    assert NAME not in ATTENTION_DESIGNS
    design = register_attention_design(QKNormDesign())
    yield design
    ATTENTION_DESIGNS.pop(NAME)
    assert NAME not in ATTENTION_DESIGNS


def tiny_model(**overrides) -> HfAttnForCausalLM:
    config = HfAttnConfig.from_preset("tiny", attention_type=NAME, **overrides)
    return randomize_(HfAttnForCausalLM(config)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model with the project's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    folder = tmp_path_factory.mktemp(NAME)
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), tokenizer


def test_the_config_and_model_take_the_design():
    model = tiny_model()
    config = model.config
    assert config.design is ATTENTION_DESIGNS[NAME] and config.num_key_value_heads == 4
    assert all(isinstance(layer.self_attn, QKNormAttention) for layer in model.model.layers)
    counted = sum(p.numel() for p in model.model.layers[0].self_attn.parameters())
    assert config.attention_parameters_per_layer == counted
    assert config.layer_types == ["full_attention"] * 2 and not config.kv_cache_bounded
    with pytest.raises(ValueError, match="must equal num_attention_heads"):
        HfAttnConfig.from_preset("tiny", attention_type=NAME, num_key_value_heads=2)


def test_cached_decode_equals_the_full_pass_and_generate_works():
    model = tiny_model()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache(config=model.config)
        steps = [model(ids[:, :8], cache=cache, use_cache=True).logits]
        for t in range(8, 12):
            steps.append(model(ids[:, t : t + 1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)

    out = model.generate(ids[:1, :6], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)
    with torch.no_grad():  # greedy: each new token is the argmax of the full pass over what came before
        expected = model(out[:, :-1]).logits[0, 5:].argmax(-1)
    assert torch.equal(out[0, 6:], expected)


def test_cache_formula_matches_the_measured_bytes():
    from hf_attn.tools.comparison.compare import measure_kv_cache

    model = tiny_model()
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(1))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
    assert cache_bytes(cache) == model.config.kv_cache_elements(20) * 4 == 2 * 4 * 16 * 20 * 2 * 4
    assert model.config.kv_cache_elements_per_token == 2 * 4 * 16 * 2
    measured = measure_kv_cache(model, prompt_len=10, new_tokens=6)  # what the comparison records
    assert measured["kv_cache_bytes"] == measured["kv_cache_formula_bytes"] > 0


def test_the_comparison_trains_and_counts_it(tmp_path, monkeypatch):
    """`run_comparison` with the quick settings and 20 steps: the variant trains in a fresh process (the
    design travels there), its loss falls, and its row, dims, cache and parameters are recorded and reported."""
    from hf_attn.cli.compare import parse_compare_args
    from hf_attn.tools.comparison.compare import VARIANTS, comparison_table, run_comparison
    from hf_attn.tools.comparison.sweep import FAMILIES, sweep_variants

    assert VARIANTS[NAME] == {"attention_type": NAME} and FAMILIES[NAME] == NAME
    assert sweep_variants("tiny", 32, [NAME]) == [NAME]  # no range of its own: its default setting
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "compare"
    args = parse_compare_args(
        ["--quick", "--variants", NAME, "--output-dir", str(out), "--max-tokens", str(20 * 4 * 32)]
        + ["--eval-every", "0", "--log-every", "1", "--decode-context", "16"]
    )
    results = run_comparison(args)
    (run,) = results["runs"]
    assert run["status"] == "ok", run.get("error")
    assert run["attention_type"] == NAME and run["attention_dims"] == "kv 4, qk-norm" and run["steps"] == 20
    assert run["kv_cache_bytes_at_block"] == run["kv_cache_formula_bytes_at_block"] > 0
    assert run["attention_params"] == run["attention_params_formula"]
    with open(os.path.join(run["model_dir"], "train_log.jsonl")) as f:
        losses = [json.loads(line)["train_loss"] for line in f if "train_loss" in line]
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses  # AdamW steps learn
    assert any(line.startswith(f"| {NAME} | ok") for line in comparison_table(results).splitlines())
    assert f"| {NAME} |" in (out / "report.md").read_text()


def test_the_exporters_refuse_it(saved, tmp_path, capsys):
    from hf_attn.cli.export import main as export_main
    from hf_attn.tools.export.gguf import check_exportable
    from hf_attn.tools.export.to_transformers import export_folder, to_deepseek_v3, to_llama, to_mistral

    folder, tokenizer = saved
    model = HfAttnForCausalLM.from_pretrained(folder)
    refusal = f"attention_type={NAME!r} has no transformers or llama.cpp equivalent"
    for export in (to_llama, to_mistral, to_deepseek_v3):
        with pytest.raises(HfAttnError, match=refusal):
            export(model)
    for format in ("llama", "mistral", "deepseek_v3"):
        with pytest.raises(HfAttnError, match=refusal):
            export_folder(folder, str(tmp_path / format), format)
    with pytest.raises(HfAttnError, match=f"attention_type={NAME!r}: llama.cpp has no"):
        check_exportable(model, tokenizer)
    with pytest.raises(SystemExit):
        export_main([folder, "--out", str(tmp_path / "m.gguf")])
    assert "llama.cpp has no" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == []


def test_lora_targets_come_from_the_design():
    from hf_attn.integrations.lora import MLP_PROJECTIONS, lora_target_modules

    model = tiny_model()
    assert lora_target_modules(model.config) == list(ATTENTION_PROJECTIONS)
    assert lora_target_modules(model.config, include_mlp=True) == [*ATTENTION_PROJECTIONS, *MLP_PROJECTIONS]
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=lora_target_modules(model.config)))
    names = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in adapted.named_parameters() if "lora_A" in n}
    assert names == set(ATTENTION_PROJECTIONS)  # the norms are not adapted


def test_the_card_and_the_benchmarks_describe_it(saved):
    from hf_attn.tools import hub
    from hf_attn.tools.benchmarks.decode import decode_configs

    folder, _ = saved
    text = hub.build_model_card(folder, repo_id="user/qknorm").text
    assert "| KV cache per token | 256 elements = 128 per layer (kv 4, qk-norm) x 2 layers" in text
    configs = decode_configs(vocab_size=256, max_positions=64, window=None)
    assert configs[NAME].attention_type == NAME and configs[NAME].head_dim == 64
