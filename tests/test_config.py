"""HfAttnConfig: every bad value raises ValueError naming its field; derived values fill only Nones."""

import re

import pytest
from transformers import AutoConfig

from hf_attn import PRESETS, HfAttnConfig

# (overrides on the "tiny" preset: 4 heads, hidden 64, head_dim 16) -> field the message must name
BAD_CONFIGS = [
    (dict(attention_type="gqa_v2"), "attention_type"),
    (dict(attention_type="mha", num_key_value_heads=2), "num_key_value_heads"),
    (dict(attention_type="mqa", num_key_value_heads=2), "num_key_value_heads"),
    (dict(attention_type="gqa", num_key_value_heads=3), "num_key_value_heads"),
    (dict(attention_type="gqa", num_attention_heads=3, hidden_size=48), "num_key_value_heads"),  # no group fits
    (dict(attention_type="gqa", num_key_value_heads=0), "num_key_value_heads"),
    (dict(hidden_size=66), "hidden_size"),  # 66 % 4 heads != 0 and no head_dim
    (dict(hidden_size=0), "hidden_size"),
    (dict(hidden_size=True), "hidden_size"),  # a bool is not a size
    (dict(vocab_size=0), "vocab_size"),
    (dict(intermediate_size=-1), "intermediate_size"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(num_attention_heads=0), "num_attention_heads"),
    (dict(num_attention_heads=-4), "num_attention_heads"),
    (dict(max_position_embeddings=0), "max_position_embeddings"),
    (dict(head_dim=0), "head_dim"),
    (dict(attention_type="gqa", head_dim=15), "head_dim"),  # RoPE needs an even head_dim
    (dict(attention_dropout=1.0), "attention_dropout"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    # MLA fields on a non-MLA type
    (dict(attention_type="gqa", kv_lora_rank=32), "kv_lora_rank"),
    (dict(attention_type="mha", q_lora_rank=32), "q_lora_rank"),
    (dict(attention_type="mqa", qk_nope_head_dim=16), "qk_nope_head_dim"),
    (dict(attention_type="gqa", qk_rope_head_dim=8), "qk_rope_head_dim"),
    (dict(attention_type="mha", v_head_dim=16), "v_head_dim"),
    # MLA rules
    (dict(attention_type="mla", qk_rope_head_dim=7), "qk_rope_head_dim"),
    (dict(attention_type="mla", qk_rope_head_dim=0), "qk_rope_head_dim"),
    (dict(attention_type="mla", kv_lora_rank=0), "kv_lora_rank"),
    (dict(attention_type="mla", kv_lora_rank=-8), "kv_lora_rank"),
    (dict(attention_type="mla", q_lora_rank=0), "q_lora_rank"),
    (dict(attention_type="mla", qk_nope_head_dim=0), "qk_nope_head_dim"),
    (dict(attention_type="mla", v_head_dim=-1), "v_head_dim"),
    (dict(attention_type="mla", num_key_value_heads=2), "num_key_value_heads"),
    (dict(attention_type="mla", mla_absorb="sometimes"), "mla_absorb"),
    # sliding window: GQA family only, at least 2 (transformers' cache keeps sliding_window - 1 keys)
    (dict(attention_type="gqa", sliding_window=1), "sliding_window"),
    (dict(attention_type="gqa", sliding_window=0), "sliding_window"),
    (dict(attention_type="mha", sliding_window=8.0), "sliding_window"),
    (dict(attention_type="mla", sliding_window=1), "sliding_window"),
    # Performer fields on other types, and Performer's rules
    (dict(attention_type="mha", performer_features=32), "performer_features"),
    (dict(attention_type="mla", performer_chunk_size=32), "performer_chunk_size"),
    (dict(attention_type="gqa", performer_redraw_interval=10), "performer_redraw_interval"),
    (dict(attention_type="performer", performer_features=0), "performer_features"),
    (dict(attention_type="performer", performer_chunk_size=0), "performer_chunk_size"),
    (dict(attention_type="performer", performer_redraw_interval=-1), "performer_redraw_interval"),
    (dict(attention_type="performer", num_key_value_heads=3), "num_key_value_heads"),
    (dict(attention_type="performer", kv_lora_rank=32), "kv_lora_rank"),
    (dict(attention_type="performer", attention_dropout=0.1), "attention_dropout"),
    (dict(attention_type="performer", layer_types=["full_attention"] * 2), "layer_types"),
    # RoPE: only plain RoPE is implemented
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "rope_type"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}), "rope_type"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": -1.0}), "rope_theta"),
]


@pytest.mark.parametrize("overrides, field", BAD_CONFIGS, ids=[f"{f}-{o}" for o, f in BAD_CONFIGS])
def test_bad_config_raises_value_error_naming_field(overrides, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        HfAttnConfig.from_preset("tiny", **overrides)


@pytest.mark.parametrize("attention_type", ["mha", "gqa", "mqa"])
def test_bad_mla_absorb_rejected_for_every_type(attention_type):
    with pytest.raises(ValueError, match="mla_absorb"):
        HfAttnConfig.from_preset("tiny", attention_type=attention_type, mla_absorb="sometimes")


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="huge"):
        HfAttnConfig.from_preset("huge")


@pytest.mark.parametrize(
    "attention_type, heads, expected_kv",
    [("mha", 4, 4), ("mqa", 4, 1), ("gqa", 4, 2), ("gqa", 8, 2), ("gqa", 16, 4), ("gqa", 6, 3), ("mla", 4, 4)],
)
def test_derived_num_key_value_heads(attention_type, heads, expected_kv):
    config = HfAttnConfig.from_preset(
        "tiny", attention_type=attention_type, num_attention_heads=heads, hidden_size=16 * heads
    )
    assert config.num_key_value_heads == expected_kv
    assert config.head_dim == 16


@pytest.mark.parametrize("kv", [1, 2, 4, 8])
def test_user_set_kv_heads_preserved_for_gqa(kv):
    config = HfAttnConfig.from_preset(
        "tiny", attention_type="gqa", num_attention_heads=8, hidden_size=128, num_key_value_heads=kv
    )
    assert config.num_key_value_heads == kv


def test_user_set_head_dim_preserved():
    # head_dim * heads != hidden_size is legal when head_dim is given (like Llama / Gemma)
    config = HfAttnConfig.from_preset("tiny", attention_type="gqa", head_dim=32)
    assert config.head_dim == 32
    assert config.rope_dim == 32
    # hidden 66 is not divisible by 4 heads, but an explicit head_dim makes it legal and is kept
    config = HfAttnConfig.from_preset("tiny", hidden_size=66, head_dim=8)
    assert (config.hidden_size, config.head_dim) == (66, 8)


def test_mla_defaults_follow_paper_ratios():
    config = HfAttnConfig.from_preset("tiny", attention_type="mla")  # d_h = 16
    assert config.kv_lora_rank == 64  # 4 d_h
    assert config.qk_rope_head_dim == 8  # d_h / 2
    assert config.qk_nope_head_dim == 16
    assert config.v_head_dim == 16
    assert config.q_lora_rank is None
    assert config.num_key_value_heads == 4
    assert config.rope_dim == 8


def test_mla_user_values_preserved():
    values = dict(
        kv_lora_rank=24, q_lora_rank=12, qk_rope_head_dim=4, qk_nope_head_dim=12, v_head_dim=20, mla_absorb="never"
    )
    config = HfAttnConfig.from_preset("tiny", attention_type="mla", **values)
    assert {k: getattr(config, k) for k in values} == values


def test_default_rope_theta():
    config = HfAttnConfig.from_preset("tiny")
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert config.rope_parameters["rope_type"] == "default"
    config = HfAttnConfig.from_preset("tiny", rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    assert config.rope_parameters["rope_theta"] == 500000.0


def test_presets_build():
    for name, values in PRESETS.items():
        for attention_type in ("mha", "gqa", "mqa", "mla", "performer"):
            config = HfAttnConfig.from_preset(name, attention_type=attention_type)
            assert {k: getattr(config, k) for k in values} == values


@pytest.mark.parametrize(
    "attention_type, expected",
    [
        ("mha", 2 * 4 * 16 * 2),  # 2 (k and v) * kv heads * head_dim * layers
        ("gqa", 2 * 2 * 16 * 2),
        ("mqa", 2 * 1 * 16 * 2),
        ("mla", (64 + 8) * 2),  # (kv_lora_rank + qk_rope_head_dim) * layers
    ],
)
def test_kv_cache_elements_per_token_formula(attention_type, expected):
    config = HfAttnConfig.from_preset("tiny", attention_type=attention_type)
    assert config.kv_cache_elements_per_token == expected
    assert not config.kv_cache_bounded
    assert config.kv_cache_elements(100) == 100 * expected


def test_kv_cache_elements_bounded_designs():
    window = HfAttnConfig.from_preset("tiny", attention_type="gqa", sliding_window=8)
    assert window.kv_cache_bounded and window.kv_cache_elements_per_token == 2 * 2 * 16 * 2
    # transformers' sliding-window layer keeps the last window - 1 tokens between steps
    assert [window.kv_cache_elements(n) // (2 * 2 * 16 * 2) for n in (0, 3, 7, 8, 1000)] == [0, 3, 7, 7, 7]
    performer = HfAttnConfig.from_preset("tiny", attention_type="performer", num_key_value_heads=2)
    assert performer.kv_cache_bounded and performer.kv_cache_elements_per_token == 0
    state = 2 * 2 * (64 + 1) * (16 + 1)  # layers * kv heads * (features (4 d_h) + count) * (head_dim + 1): [S | z]
    assert [performer.kv_cache_elements(n) for n in (0, 1, 10, 10_000)] == [0, state, state, state]
    with pytest.raises(ValueError, match="seq_len"):
        performer.kv_cache_elements(-1)


def test_performer_defaults_and_user_values():
    config = HfAttnConfig.from_preset("tiny", attention_type="performer")  # d_h = 16
    assert (config.performer_features, config.performer_redraw_interval, config.performer_chunk_size) == (64, 1000, 64)
    assert config.num_key_value_heads == 4 and config.layer_types == ["linear_attention"] * 2
    values = dict(performer_features=24, performer_redraw_interval=0, performer_chunk_size=5, num_key_value_heads=1)
    config = HfAttnConfig.from_preset("tiny", attention_type="performer", **values)
    assert {k: getattr(config, k) for k in values} == values
    for attention_type in ("mha", "mla"):
        config = HfAttnConfig.from_preset("tiny", attention_type=attention_type)
        assert config.performer_features is None and config.layer_types == ["full_attention"] * 2


def _without_auto_map(config_dict: dict) -> dict:
    """Drops what saving adds by design: the remote-code pointer and the folder it was loaded from."""
    return {k: v for k, v in config_dict.items() if k not in ("auto_map", "_name_or_path")}


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attention_type="mha"),
        dict(attention_type="gqa", num_key_value_heads=2, head_dim=32, attention_bias=True),
        dict(attention_type="mqa", tie_word_embeddings=True),
        dict(attention_type="mla", q_lora_rank=16, kv_lora_rank=24, qk_rope_head_dim=4, mla_absorb="always"),
        dict(attention_type="gqa", sliding_window=8),
        dict(attention_type="performer", performer_features=24, performer_redraw_interval=5, performer_chunk_size=7),
    ],
)
def test_round_trip_dict_and_disk(overrides, tmp_path):
    config = HfAttnConfig.from_preset("tiny", **overrides)
    as_dict = config.to_dict()
    assert HfAttnConfig.from_dict(as_dict).to_dict() == as_dict
    as_dict = _without_auto_map(as_dict)
    config.save_pretrained(tmp_path)
    loaded = HfAttnConfig.from_pretrained(tmp_path)
    # save_pretrained adds the remote-code pointer; everything else must come back unchanged
    assert loaded.auto_map == {"AutoConfig": "configuration_hf_attn.HfAttnConfig"}
    assert _without_auto_map(loaded.to_dict()) == as_dict
    auto = AutoConfig.from_pretrained(tmp_path)  # registered by `import hf_attn`
    assert type(auto) is HfAttnConfig
    assert _without_auto_map(auto.to_dict()) == as_dict
    for key, value in overrides.items():
        assert getattr(loaded, key) == value


@pytest.mark.parametrize(
    "field, value",
    [("layer_types", ["sliding_attention", "full_attention"]), ("attention_chunk_size", 16),
     ("use_sliding_window", True), ("rope_scaling", {"rope_type": "linear", "factor": 2.0})],
)  # fmt: skip
def test_fields_transformers_reads_but_the_model_ignores_are_refused(field, value):
    """A sliding_window the model ignored used to make DynamicCache keep only the last 16 keys; now it is honoured
    (tests/test_sliding_window.py), and the fields it still ignores are refused."""
    with pytest.raises(ValueError, match=f"{field}="):
        HfAttnConfig.from_preset("tiny", attention_type="gqa", **{field: value})
