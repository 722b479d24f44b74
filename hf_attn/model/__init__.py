"""The model: the files that `save_pretrained` copies next to the weights of every checkpoint.

They import only torch, transformers, the standard library and each other (single-dot imports), so
a downloaded folder loads with `trust_remote_code=True` where hf_attn is not installed.
`tests/test_layout.py` enforces it.
"""

from .attention_utils import ATTENTION_DESIGNS, AttentionDesign, register_attention_design
from .configuration_hf_attn import ATTENTION_TYPES, PRESETS, HfAttnConfig
from .modeling_hf_attn import HfAttnForCausalLM, HfAttnModel, HfAttnPreTrainedModel

__all__ = [
    "ATTENTION_DESIGNS",
    "AttentionDesign",
    "register_attention_design",
    "ATTENTION_TYPES",
    "PRESETS",
    "HfAttnConfig",
    "HfAttnForCausalLM",
    "HfAttnModel",
    "HfAttnPreTrainedModel",
]
