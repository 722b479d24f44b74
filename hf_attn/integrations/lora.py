"""Default PEFT LoRA `target_modules` for each attention type.

PEFT picks default targets by `config.model_type`, and `hf_attn` is one model type with five
attention designs, so the default is chosen from `config.attention_type` here and passed explicitly:

    from peft import LoraConfig, get_peft_model
    from hf_attn.integrations.lora import lora_target_modules

    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=lora_target_modules(model.config)))

MHA/GQA/MQA and Performer take every attention projection, as PEFT's default for Llama-family models does for the
query and value and the QLoRA paper recommends for all of them. MLA takes DeepseekV3's projections:
the query (or its low-rank pair), the joint latent/RoPE-key down-projection, the latent
up-projection and the output. An adapter on `kv_b_proj` works both unmerged (the absorbed decode
folds the adapter in, see `HfAttnMLAttention._kv_b_weight`) and merged.
"""

from __future__ import annotations

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLA_PROJECTIONS = ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
MLA_LOW_RANK_QUERY_PROJECTIONS = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
MLP_PROJECTIONS = ["gate_proj", "up_proj", "down_proj"]

LORA_TARGET_MODULES: dict[str, list[str]] = {
    "mha": ATTENTION_PROJECTIONS,
    "gqa": ATTENTION_PROJECTIONS,
    "mqa": ATTENTION_PROJECTIONS,
    "mla": MLA_PROJECTIONS,
    "performer": ATTENTION_PROJECTIONS,  # Llama's names; the random projection is a buffer, not adapted
}


def lora_target_modules(config, include_mlp: bool = False) -> list[str]:
    """The attention projections to adapt for `config.attention_type` (plus the SwiGLU MLP if `include_mlp`)."""
    if config.attention_type == "mla" and config.q_lora_rank is not None:
        targets = MLA_LOW_RANK_QUERY_PROJECTIONS
    else:
        targets = LORA_TARGET_MODULES[config.attention_type]
    return [*targets, *(MLP_PROJECTIONS if include_mlp else [])]
