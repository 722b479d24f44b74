"""hf_attn: decoder-only language models with pluggable attention (MHA, MQA, GQA, DeepSeek MLA, Performer),
with an optional sliding window for MHA/GQA/MQA.

The package has three layers, and imports only point down:

    hf_attn.model   configuration, modeling, attention: shipped inside every checkpoint
    hf_attn.train   data, tokenizer training, the training loop, evaluation, the run report
    hf_attn.tools   comparison, benchmarks, export, Hub sharing, the web demo
    hf_attn.cli     the command lines (`hf-attn-train`, ...), built from the options dataclasses

Importing the package registers the classes with transformers' Auto classes, so
`AutoModelForCausalLM.from_config(HfAttnConfig(...))` and `from_pretrained(folder)` work without
`trust_remote_code`. Saved folders also carry the modeling code, for users without hf_attn.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .model import (
    ATTENTION_DESIGNS,
    ATTENTION_TYPES,
    PRESETS,
    AttentionDesign,
    HfAttnConfig,
    HfAttnForCausalLM,
    HfAttnModel,
    HfAttnPreTrainedModel,
    register_attention_design,
)
from .tools.export.to_transformers import to_deepseek_v3, to_llama, to_mistral

AutoConfig.register(HfAttnConfig.model_type, HfAttnConfig, exist_ok=True)
AutoModel.register(HfAttnConfig, HfAttnModel, exist_ok=True)
AutoModelForCausalLM.register(HfAttnConfig, HfAttnForCausalLM, exist_ok=True)

__all__ = [
    "ATTENTION_DESIGNS",
    "ATTENTION_TYPES",
    "AttentionDesign",
    "register_attention_design",
    "PRESETS",
    "HfAttnConfig",
    "HfAttnModel",
    "HfAttnForCausalLM",
    "HfAttnPreTrainedModel",
    "to_llama",
    "to_deepseek_v3",
    "to_mistral",
]
