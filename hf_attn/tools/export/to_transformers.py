"""Export hf_attn models to transformers' own classes: Llama for MHA/GQA/MQA, DeepseekV3 for MLA,
Mistral for MHA/GQA/MQA with a sliding window (or without). Performer has no transformers equivalent.

hf_attn uses the same parameter names as those classes, so an export is a config translation plus
a strict `load_state_dict`: any naming or shape drift fails loudly instead of loading half a model.
`export_folder` writes the result as a plain transformers folder (weights, config, tokenizer) that
loads without hf_attn; GGUF files for llama.cpp are written by `hf_attn.tools.export.gguf`.
"""

import os

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from ...model.configuration_hf_attn import HfAttnConfig
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...utils import HfAttnError, check_weights

# --format of `hf-attn-export` -> the attention types it takes, and what to use for the others.
FOLDER_FORMATS = {
    "llama": (("mha", "gqa", "mqa"), "MLA models export with --format deepseek_v3 or gguf"),
    "deepseek_v3": (("mla",), "MHA/GQA/MQA models export with --format llama or gguf"),
    "mistral": (("mha", "gqa", "mqa"), "MLA models export with --format deepseek_v3 or gguf"),
}
NO_EXPORT = "attention_type='performer' has no transformers or llama.cpp equivalent: share it with its remote code"

_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "initializer_range",
    "tie_word_embeddings",
    "attention_bias",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def _shared(config: HfAttnConfig) -> dict:
    fields = {name: getattr(config, name) for name in _SHARED_FIELDS}
    fields["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_parameters["rope_theta"]}
    return fields


def llama_config(config: HfAttnConfig) -> LlamaConfig:
    """The `LlamaConfig` that describes the same network as an MHA/GQA/MQA `config` (no sliding window)."""
    if config.attention_type == "performer":
        raise HfAttnError(NO_EXPORT)
    if config.attention_type == "mla":
        raise ValueError("attention_type='mla' has no Llama equivalent; use to_deepseek_v3().")
    if config.sliding_window is not None:
        raise HfAttnError(f"sliding_window={config.sliding_window}: Llama attends to everything; use to_mistral().")
    return LlamaConfig(**_shared(config), head_dim=config.head_dim, mlp_bias=False)


def mistral_config(config: HfAttnConfig) -> MistralConfig:
    """The `MistralConfig` that describes the same network as an MHA/GQA/MQA `config`, sliding window included."""
    if config.attention_type == "performer":
        raise HfAttnError(NO_EXPORT)
    if config.attention_type == "mla":
        raise ValueError("attention_type='mla' has no Mistral equivalent; use to_deepseek_v3().")
    return MistralConfig(**_shared(config), head_dim=config.head_dim, sliding_window=config.sliding_window)


def deepseek_v3_config(config: HfAttnConfig) -> DeepseekV3Config:
    """The `DeepseekV3Config` that describes the same network as an MLA `config`.

    Every layer is dense (`first_k_dense_replace = num_hidden_layers`), RoPE is not interleaved and
    there are no multi-token-prediction layers, which is what hf_attn's MLA decoder is.
    """
    if config.attention_type == "performer":
        raise HfAttnError(NO_EXPORT)
    if config.attention_type != "mla":
        raise ValueError(f"to_deepseek_v3() needs attention_type='mla', got {config.attention_type!r}.")
    return DeepseekV3Config(
        **_shared(config),
        kv_lora_rank=config.kv_lora_rank,
        q_lora_rank=config.q_lora_rank,
        qk_nope_head_dim=config.qk_nope_head_dim,
        qk_rope_head_dim=config.qk_rope_head_dim,
        v_head_dim=config.v_head_dim,
        first_k_dense_replace=config.num_hidden_layers,
        rope_interleave=False,
        num_nextn_predict_layers=0,
    )


def _export(model: HfAttnForCausalLM, target_cls, target_config):
    target_config._attn_implementation = model.config._attn_implementation
    target = target_cls(target_config).to(dtype=model.dtype, device=model.device)
    target.load_state_dict(model.state_dict(), strict=True)
    return target.eval() if not model.training else target


def to_llama(model: HfAttnForCausalLM) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` carrying `model`'s weights (MHA/GQA/MQA); `save_pretrained` it for a plain checkpoint."""
    return _export(model, LlamaForCausalLM, llama_config(model.config))


def to_deepseek_v3(model: HfAttnForCausalLM) -> DeepseekV3ForCausalLM:
    """A `DeepseekV3ForCausalLM` carrying an MLA `model`'s weights."""
    return _export(model, DeepseekV3ForCausalLM, deepseek_v3_config(model.config))


def to_mistral(model: HfAttnForCausalLM) -> MistralForCausalLM:
    """A `MistralForCausalLM` carrying an MHA/GQA/MQA `model`'s weights, with its `sliding_window` (Llama's names)."""
    return _export(model, MistralForCausalLM, mistral_config(model.config))


EXPORTERS = {"llama": to_llama, "deepseek_v3": to_deepseek_v3, "mistral": to_mistral}


def load_for_export(model_dir: str) -> tuple[HfAttnForCausalLM, object]:
    """A saved hf_attn model folder's model (float32, eval) and tokenizer; other checkpoints are refused."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(2, "no such model folder", model_dir)
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    if model_type != HfAttnConfig.model_type:
        raise HfAttnError(f"{model_dir}: model_type {model_type!r} is not an hf_attn checkpoint")
    check_weights(model_dir)
    model = HfAttnForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def export_folder(model_dir: str, out_dir: str, format: str) -> str:
    """Write `model_dir` as a plain transformers folder of `format` (a `FOLDER_FORMATS` key) plus its tokenizer.

    The result loads with `AutoModelForCausalLM.from_pretrained(out_dir)` where hf_attn is not
    installed. An attention type the format cannot hold is refused before anything is written.
    """
    if format not in FOLDER_FORMATS:
        raise ValueError(f"format must be one of {sorted(FOLDER_FORMATS)}, got {format!r}")
    model, tokenizer = load_for_export(model_dir)
    config = model.config
    types, instead = FOLDER_FORMATS[format]
    if config.attention_type == "performer":
        raise HfAttnError(NO_EXPORT)
    if config.attention_type not in types:
        raise HfAttnError(
            f"--format {format} holds attention types {', '.join(types)}, not {config.attention_type!r}: {instead}"
        )
    if config.sliding_window is not None and format != "mistral":
        raise HfAttnError(
            f"sliding_window={config.sliding_window}: --format {format} attends to the whole context; "
            "transformers' Mistral has the window (format 'mistral', or hf_attn.to_mistral)"
        )
    target = EXPORTERS[format](model)
    target.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
