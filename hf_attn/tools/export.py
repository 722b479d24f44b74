"""Export hf_attn models to transformers' own classes: Llama for MHA/GQA/MQA, DeepseekV3 for MLA.

hf_attn uses the same parameter names as those classes, so an export is a config translation plus
a strict `load_state_dict`: any naming or shape drift fails loudly instead of loading half a model.
"""

from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

from ..model.configuration_hf_attn import HfAttnConfig
from ..model.modeling_hf_attn import HfAttnForCausalLM

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
    """The `LlamaConfig` that describes the same network as an MHA/GQA/MQA `config`."""
    if config.attention_type == "mla":
        raise ValueError("attention_type='mla' has no Llama equivalent; use to_deepseek_v3().")
    return LlamaConfig(**_shared(config), head_dim=config.head_dim, mlp_bias=False)


def deepseek_v3_config(config: HfAttnConfig) -> DeepseekV3Config:
    """The `DeepseekV3Config` that describes the same network as an MLA `config`.

    Every layer is dense (`first_k_dense_replace = num_hidden_layers`), RoPE is not interleaved and
    there are no multi-token-prediction layers, which is what hf_attn's MLA decoder is.
    """
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
