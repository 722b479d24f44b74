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
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from ...loading import load_model_and_tokenizer
from ...model.configuration_hf_attn import ATTENTION_DESIGNS, TRUNK_FIELDS, HfAttnConfig
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...utils import HfAttnError

# Each design lists the formats that hold it (`AttentionDesign.export_formats`); these are the writers of each.
WRITERS = {
    "llama": "to_llama()",
    "deepseek_v3": "to_deepseek_v3()",
    "mistral": "to_mistral()",
    "gguf": "export_gguf()",
}
FOLDER_FORMATS = ("llama", "deepseek_v3", "mistral")  # --format of `hf-attn-export` that writes a folder
WINDOWED_FORMATS = ("mistral",)  # the formats whose attention has a sliding window (Mistral: Llama plus a window)
NO_EXPORT = "attention_type={!r} has no transformers or llama.cpp equivalent: share it with its remote code"


def design_title(design) -> str:
    """A design's name in prose ("FAVOR+", "MLA"): its `title`, else its `name`."""
    return design.title or design.name


def export_refusal(config: HfAttnConfig, format: str, cli: bool = False) -> str | None:
    """Why `format` cannot hold `config`'s model, in one line naming what to use instead (None: it can).

    Read from the design: its `export_formats`, and the window, which only `WINDOWED_FORMATS` keep.
    `cli` names the formats as `hf-attn-export`'s --format, otherwise as the functions that write them.
    """
    design, name = config.design, config.attention_type
    window = config.effective_sliding_window
    label = f"--format {format}" if cli else WRITERS[format]
    if not design.export_formats:
        return NO_EXPORT.format(name)
    if format not in design.export_formats:
        holders = ", ".join(d.name for d in ATTENTION_DESIGNS.values() if format in d.export_formats)
        # with a window only the windowed formats fit; without one, Llama rather than Mistral-without-a-window
        fits = [f for f in design.export_formats if (f in WINDOWED_FORMATS) == (window is not None)]
        fits = fits or list(design.export_formats)
        instead = "--format " + " or ".join(fits) if cli else " or ".join(WRITERS[f] for f in fits)
        return f"{label} holds attention types {holders}, not {name!r}, which exports with {instead}"
    if window is not None and format not in WINDOWED_FORMATS:
        return (
            f"sliding_window={window}: {label} attends to the whole context; "
            "transformers' Mistral has the window (format 'mistral', or hf_attn.to_mistral)"
        )
    return None


def check_export(config: HfAttnConfig, format: str, cli: bool = False) -> None:
    """Raise `HfAttnError` with `export_refusal`'s line when `format` cannot hold `config`'s model."""
    refusal = export_refusal(config, format, cli)
    if refusal is not None:
        raise HfAttnError(refusal)


_SHARED_FIELDS = (*TRUNK_FIELDS, "num_key_value_heads", "attention_bias")


def _shared(config: HfAttnConfig) -> dict:
    fields = {name: getattr(config, name) for name in _SHARED_FIELDS}
    fields["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_parameters["rope_theta"]}
    return fields


def llama_config(config: HfAttnConfig) -> LlamaConfig:
    """The `LlamaConfig` that describes the same network as an MHA/GQA/MQA `config` (no sliding window)."""
    check_export(config, "llama")
    return LlamaConfig(**_shared(config), head_dim=config.head_dim, mlp_bias=False)


def mistral_config(config: HfAttnConfig) -> MistralConfig:
    """The `MistralConfig` that describes the same network as an MHA/GQA/MQA `config`, sliding window included."""
    check_export(config, "mistral")
    return MistralConfig(**_shared(config), head_dim=config.head_dim, sliding_window=config.sliding_window)


def deepseek_v3_config(config: HfAttnConfig) -> DeepseekV3Config:
    """The `DeepseekV3Config` that describes the same network as an MLA `config`.

    Every layer is dense (`first_k_dense_replace = num_hidden_layers`), RoPE is not interleaved and
    there are no multi-token-prediction layers, which is what hf_attn's MLA decoder is.
    """
    check_export(config, "deepseek_v3")
    if config.mla_latent_norm_eps != config.rms_norm_eps:  # DeepseekV3's latent norms use rms_norm_eps
        raise HfAttnError(
            f"mla_latent_norm_eps={config.mla_latent_norm_eps} with rms_norm_eps={config.rms_norm_eps}: "
            "DeepseekV3 uses one eps in the block and latent norms."
        )
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
    return load_model_and_tokenizer(model_dir, HfAttnForCausalLM, dtype=torch.float32)


def export_folder(model_dir: str, out_dir: str, format: str) -> str:
    """Write `model_dir` as a plain transformers folder of `format` (a `FOLDER_FORMATS` key) plus its tokenizer.

    The result loads with `AutoModelForCausalLM.from_pretrained(out_dir)` where hf_attn is not
    installed. An attention type the format cannot hold is refused before anything is written.
    """
    if format not in FOLDER_FORMATS:
        raise ValueError(f"format must be one of {sorted(FOLDER_FORMATS)}, got {format!r}")
    model, tokenizer = load_for_export(model_dir)
    check_export(model.config, format, cli=True)
    target = EXPORTERS[format](model)
    target.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
