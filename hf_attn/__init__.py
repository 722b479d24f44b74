"""hf_attn: decoder-only language models with pluggable attention (MHA, MQA, GQA, DeepSeek MLA).

Importing the package registers the classes with transformers' Auto classes, so
`AutoModelForCausalLM.from_config(HfAttnConfig(...))` and `from_pretrained(folder)` work without
`trust_remote_code`. Saved folders also carry the modeling code, for users without hf_attn.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_hf_attn import ATTENTION_TYPES, PRESETS, HfAttnConfig
from .export import to_deepseek_v3, to_llama
from .modeling_hf_attn import HfAttnForCausalLM, HfAttnModel, HfAttnPreTrainedModel

AutoConfig.register(HfAttnConfig.model_type, HfAttnConfig, exist_ok=True)
AutoModel.register(HfAttnConfig, HfAttnModel, exist_ok=True)
AutoModelForCausalLM.register(HfAttnConfig, HfAttnForCausalLM, exist_ok=True)

__all__ = [
    "ATTENTION_TYPES",
    "PRESETS",
    "HfAttnConfig",
    "HfAttnModel",
    "HfAttnForCausalLM",
    "HfAttnPreTrainedModel",
    "to_llama",
    "to_deepseek_v3",
]
