"""convert_to_mla: exactness where the math allows it, Llama sources, ranks, fine-tuning, cache, export, errors."""

import json

import pytest
import torch
from conftest import randomize_
from torch.testing import assert_close
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from hf_attn import HfAttnConfig, HfAttnForCausalLM, to_deepseek_v3, to_llama
from hf_attn.cli.convert import main as convert_main
from hf_attn.tools.comparison.compare import measure_kv_cache
from hf_attn.tools.conversion.convert import (
    attention_errors,
    calibration_ids,
    convert_to_mla,
    latent_factors,
    load_source,
)
from hf_attn.train import CorpusSpec, ModelOptions, TrainArgs, train
from hf_attn.train.data import build_lm_data
from hf_attn.train.evaluation import evaluate_loss
from hf_attn.utils import HfAttnError, read_jsonl

pytestmark = pytest.mark.usefixtures("single_thread")
CORPUS = CorpusSpec(max_chars=100_000)
TINY = dict(
    block_size=64, batch_size=8, lr=3e-3, warmup_steps=2, tracker="none", progress=False, sample_tokens=4, save_every=0
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GQA model (4 heads, 2 K/V heads, head_dim 16) trained for 40 steps, its folder, and calibration ids."""
    out = tmp_path_factory.mktemp("gqa")
    train(
        TrainArgs(
            output_dir=str(out),
            model=ModelOptions(preset="tiny", attention_type="gqa"),
            corpus=CORPUS,
            train_tokenizer_vocab=512,
            max_steps=40,
            eval_every=40,
            **TINY,
        )
    )
    model, tokenizer = load_source(str(out))
    return model, out, calibration_ids(tokenizer, CORPUS, 512, 64)


def tiny(attention_type: str, seed: int = 0, **overrides) -> HfAttnForCausalLM:
    config = HfAttnConfig.from_preset("tiny", attention_type=attention_type, **overrides)
    return randomize_(HfAttnForCausalLM(config), seed=seed).eval()


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("calibrated", [False, True])
def test_mqa_with_every_rope_dim_at_full_rank_gives_the_source_logits(calibrated):
    source = tiny("mqa")
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))
    converted = convert_to_mla(source, 16, 16, calibration_data=ids if calibrated else None, latent_norm="bypass")
    assert converted.config.rope_parameters["rope_theta"] == pytest.approx(source.config.rope_parameters["rope_theta"])
    with torch.no_grad():
        assert_close(converted(ids).logits, source(ids).logits, rtol=1e-4, atol=1e-4)
    # The latent RMSNorm is what "fit" cannot reproduce: the same conversion with the norm in use is off.
    fit = convert_to_mla(source, 16, 16, calibration_data=ids if calibrated else None)
    assert max(attention_errors(source, fit, ids)) > 1e-2


def _scores_and_values(model, x):
    """Per head, unrotated scores (softmax scale included) between all rows of x, and values: MHA/GQA or MLA."""
    attn = model.model.layers[0].self_attn
    config = model.config
    heads = config.num_attention_heads
    if config.attention_type != "mla":
        d, group = config.head_dim, heads // config.num_key_value_heads
        q = attn.q_proj(x).view(-1, heads, d).transpose(0, 1)  # (H, N, d)
        k = attn.k_proj(x).view(-1, heads // group, d).transpose(0, 1).repeat_interleave(group, 0)
        v = attn.v_proj(x).view(-1, heads // group, d).transpose(0, 1).repeat_interleave(group, 0)
        return q @ k.transpose(1, 2) * d**-0.5, v
    nope, rope, vd, rank = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim, config.kv_lora_rank
    q = attn.q_proj(x).view(-1, heads, nope + rope).transpose(0, 1)  # (H, N, nope + rope)
    latent, k_rope = attn.kv_a_proj_with_mqa(x).split([rank, rope], dim=-1)
    kv = attn.kv_b_proj(attn.kv_a_layernorm(latent)).view(-1, heads, nope + vd).transpose(0, 1)
    k = torch.cat((kv[..., :nope], k_rope.expand(heads, -1, -1)), dim=-1)
    return q @ k.transpose(1, 2) * attn.scaling, kv[..., nope:]


@pytest.mark.parametrize("attention_type, latent_norm", [("mha", "bypass"), ("gqa", "bypass"), ("mha", "fit")])
def test_the_factorization_at_full_rank_reproduces_the_source_keys_and_values(attention_type, latent_norm):
    """With RoPE set aside (position 0), full rank reproduces every score q.k and every value of every head.

    "fit" is exact only where the rank reaches hidden_size (MHA here): the latent then carries the
    whole unit-RMS input, whose norm the RMSNorm divides by is the same for every token.
    """
    source = tiny(attention_type, num_hidden_layers=1)
    kv_dims = 2 * source.config.num_key_value_heads * source.config.head_dim
    rank = min(source.config.hidden_size, kv_dims - 8)
    assert latent_norm == "bypass" or rank == source.config.hidden_size
    converted = convert_to_mla(source, rank, 8, latent_norm=latent_norm)
    hidden = torch.randn(24, source.config.hidden_size, generator=torch.Generator().manual_seed(2))
    x = source.model.layers[0].input_layernorm(hidden)  # what attention sees
    with torch.no_grad():
        (scores, values), (expected_scores, expected_values) = (_scores_and_values(m, x) for m in (converted, source))
    assert_close(values, expected_values, rtol=1e-4, atol=1e-4)
    assert_close(scores, expected_scores, rtol=1e-4, atol=1e-4)


def test_latent_factors_at_full_rank_are_exact_with_a_constant_latent_norm():
    w = torch.randn(40, 32, dtype=torch.float64)
    gain = torch.rand(32, dtype=torch.float64) + 0.5
    down, up = latent_factors(w, torch.diag(gain), 32, gain)
    assert_close(up @ down, w)
    x = torch.randn(100, 32, dtype=torch.float64)
    ratio = (x @ down.T).pow(2).sum(1) / (x / gain).pow(2).sum(1)  # |latent|^2 / |u|^2, u = x / gain
    assert_close(ratio, torch.ones_like(ratio))


# ---------------------------------------------------------------- sources and ranks


def test_a_llama_checkpoint_converts_to_the_same_mla_model(trained, tmp_path):
    model, _, ids = trained
    to_llama(model).save_pretrained(tmp_path / "llama")
    llama, tokenizer = load_source(str(tmp_path / "llama"))
    assert tokenizer is None and llama.config.attention_type == "gqa"
    ours = convert_to_mla(model, 40, 8, calibration_data=ids[:4])
    theirs = convert_to_mla(LlamaForCausalLM.from_pretrained(tmp_path / "llama"), 40, 8, calibration_data=ids[:4])
    assert ours.config.to_dict() == theirs.config.to_dict()
    for name, value in ours.state_dict().items():
        assert_close(theirs.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_lower_ranks_reconstruct_no_better(trained):
    model, _, ids = trained
    errors = [
        sum(attention_errors(model, convert_to_mla(model, rank, 8, calibration_data=ids), ids[:4]))
        for rank in (56, 40, 24, 8)
    ]
    assert errors == sorted(errors), errors
    assert errors[-1] > 1.5 * errors[0]


# ---------------------------------------------------------------- fine-tuning, cache, export


def test_init_from_a_converted_model_starts_at_its_weights_and_fine_tunes(trained, tmp_path):
    model, out, ids = trained
    converted = convert_to_mla(model, 24, 8, calibration_data=ids)
    converted.save_pretrained(tmp_path / "mla")
    tokenizer = load_source(str(out))[1]
    tokenizer.save_pretrained(tmp_path / "mla")
    data = build_lm_data(CORPUS, tokenizer, 64)
    expected, _ = evaluate_loss(converted, DataLoader(data.validation, batch_size=8), max_batches=4)
    train(
        TrainArgs(
            output_dir=str(tmp_path / "tuned"),
            model=ModelOptions(init_from=str(tmp_path / "mla")),
            corpus=CORPUS,
            max_steps=15,
            eval_every=15,
            eval_on_start=True,
            eval_batches=4,
            **{**TINY, "lr": 2e-3},
        )
    )
    start, end = read_jsonl(tmp_path / "tuned" / "metrics.jsonl")
    assert start["step"] == 0 and start["val_loss"] == pytest.approx(expected, abs=1e-5)
    assert end["val_loss"] < start["val_loss"] - 0.02
    tuned = HfAttnForCausalLM.from_pretrained(tmp_path / "tuned")
    assert tuned.config.kv_lora_rank == 24 and tuned.config.rope_parameters == converted.config.rope_parameters


def test_the_cache_holds_one_latent_and_one_rope_key_per_token(trained):
    model, _, ids = trained
    converted = convert_to_mla(model, 24, 8, calibration_data=ids)
    measured = measure_kv_cache(converted)["kv_cache_bytes_per_token"] / 4  # float32 elements
    assert measured == (24 + 8) * converted.config.num_hidden_layers
    assert model.config.kv_cache_elements_per_token == 64 * 2 > measured


@pytest.mark.parametrize("latent_norm", ["fit", "bypass"])
def test_a_converted_model_gives_the_same_logits_as_deepseek_v3(trained, latent_norm):
    model, _, ids = trained
    converted = convert_to_mla(model, 24, 8, calibration_data=ids, latent_norm=latent_norm)
    converted.config._attn_implementation = "eager"
    reference = to_deepseek_v3(converted)
    with torch.no_grad():
        assert_close(reference(ids[:2]).logits, converted(ids[:2]).logits, rtol=1e-4, atol=1e-4)


def test_the_command_line_writes_a_loadable_mla_folder(trained, tmp_path, capsys):
    _, out, _ = trained
    convert_main(
        [
            str(out),
            "--kv-lora-rank",
            "24",
            "--rope-dim",
            "8",
            "--output-dir",
            str(tmp_path / "mla"),
            "--calibration-tokens",
            "256",
            "--calibration-block-size",
            "64",
            "--max-chars",
            "100000",
        ]
    )
    record = json.loads((tmp_path / "mla" / "conversion.json").read_text())
    assert record["kv_cache_elements_per_token"] == 64 and record["source_kv_cache_elements_per_token"] == 128
    assert record["calibration_tokens"] == 256 and len(record["attention_errors"]) == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "mla")
    assert model.config.attention_type == "mla" and (tmp_path / "mla" / "tokenizer.json").is_file()
    assert "wrote" in capsys.readouterr().out


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    "rank, rope, stride, message",
    [
        (57, 8, None, r"kv_lora_rank 57 is above what the source can use: .* at most 56 dims"),
        (16, 7, None, r"--rope-dim\) must be a positive even number, got 7"),
        (16, 18, None, r"--rope-dim\) 18 is larger than the source's head_dim 16"),
        (16, 8, 3, r"rope_stride 3: 4 pairs of a head_dim-16 source fit strides 1..2"),
        (0, 8, None, r"kv_lora_rank must be a positive integer"),
    ],
)
def test_bad_shapes_are_refused(rank, rope, stride, message):
    with pytest.raises(ValueError, match=message):
        convert_to_mla(tiny("gqa"), rank, rope, rope_stride=stride)


def test_unsupported_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="already an MLA model"):
        convert_to_mla(tiny("mla"), 16, 8)
    with pytest.raises(Exception, match="attention biases"):
        convert_to_mla(tiny("mha", attention_bias=True), 16, 8)
    with pytest.raises(HfAttnError, match="Performer: FAVOR\\+ has no softmax keys"):
        convert_to_mla(tiny("performer"), 16, 8)
    with pytest.raises(HfAttnError, match="sliding_window=8: the MLA model would attend to the whole context"):
        convert_to_mla(tiny("gqa", sliding_window=8), 16, 8)
    config = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    scaled = LlamaConfig(**config, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0})
    with pytest.raises(Exception, match="rope_type 'linear'"):
        convert_to_mla(LlamaForCausalLM(scaled), 16, 8)
    with pytest.raises(Exception, match="uses attention_bias, mlp_bias"):
        convert_to_mla(LlamaForCausalLM(LlamaConfig(**config, attention_bias=True, mlp_bias=True)), 16, 8)
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(SystemExit) as exit_info:
        convert_main(
            [str(tmp_path / "gpt2"), "--kv-lora-rank", "8", "--rope-dim", "8", "--output-dir", str(tmp_path / "out")]
        )
    assert exit_info.value.code == 2


def test_the_command_line_names_the_bad_rank(trained, tmp_path, capsys):
    _, out, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        convert_main([str(out), "--kv-lora-rank", "99", "--rope-dim", "8", "--output-dir", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "error: kv_lora_rank 99 is above what the source can use" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
