"""Default PEFT LoRA `target_modules` for each attention design.

PEFT picks default targets by `config.model_type`, and `hf_attn` is one model type with several
attention designs, so the default is read from the config's design here and passed explicitly:

    from peft import LoraConfig, get_peft_model
    from hf_attn.integrations.lora import lora_target_modules

    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=lora_target_modules(model.config)))

Each design names its targets next to its class (`AttentionDesign.lora_targets`). MHA/GQA/MQA and
Performer take every attention projection, as PEFT's default for Llama-family models does for the
query and value and the QLoRA paper recommends for all of them. MLA takes DeepseekV3's projections:
the query (or its low-rank pair), the joint latent/RoPE-key down-projection, the latent
up-projection and the output. An adapter on `kv_b_proj` works both unmerged (the absorbed decode
folds the adapter in, see `HfAttnMLAttention._kv_b_weight`) and merged.
"""

from __future__ import annotations

MLP_PROJECTIONS = ["gate_proj", "up_proj", "down_proj"]


def lora_target_modules(config, include_mlp: bool = False) -> list[str]:
    """The attention projections its design adapts (plus the SwiGLU MLP if `include_mlp`)."""
    return [*config.design.lora_targets(config), *(MLP_PROJECTIONS if include_mlp else [])]
