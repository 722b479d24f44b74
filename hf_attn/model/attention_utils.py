"""What the attention designs share: RoPE in the non-interleaved layout and the masked softmax.

This file ships inside every saved checkpoint next to the modeling code, so it imports only torch.
"""

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Maps (x1, x2) to (-x2, x1) on the two halves of the last dim (the non-interleaved RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates `x` (B, T, heads, rope_dim) by position; `cos`/`sin` are (B, T, rope_dim)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, rope_dim): broadcast over heads
    return x * cos + rotate_half(x) * sin


def masked_softmax(
    scores: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Softmax over the last dim of `scores` (B, heads, T, S) after the mask, in float32, then dropout.

    `attention_mask` is what transformers' mask builders return: boolean (True = attend) or additive.
    """
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    return nn.functional.dropout(weights, p=dropout, training=training)


class AttentionDesign:
    """What hf_attn knows about one attention design, written once next to its attention class.

    One instance per `attention_type`, registered with `register_attention_design`. The config reads its
    fields and derivation rules, the model its class and layer type, and every tool (comparison, export,
    LoRA targets, Hub card, benchmarks) its cache size, parameter count and targets, so adding a design
    is one file and one registered entry. Methods receive the config (an `HfAttnConfig`).
    """

    name: str = ""
    # the design's name in prose, for messages and model cards ("MLA", "FAVOR+"); empty: `name`
    title: str = ""
    # the nn.Module the decoder layer builds: __init__(config, layer_idx), forward(hidden_states,
    # position_embeddings, attention_mask, cache, **kwargs) -> (output, attention weights or None)
    attention_class: type | None = None
    # config fields only this design reads: the config refuses them on every other design
    fields: tuple[str, ...] = ()
    # whether `output_attentions` returns weights (a design with no attention matrix returns none)
    has_attention_weights: bool = True
    # whether `config.sliding_window` windows its layers (elsewhere it is kept and has no effect)
    supports_sliding_window: bool = False
    # the transformers formats `hf-attn-export` writes for it ("llama", "mistral", "deepseek_v3", "gguf")
    export_formats: tuple[str, ...] = ()

    def derive(self, config) -> None:
        """Fill the design's fields left as None, and raise ValueError naming a field that breaks a rule."""

    def layer_type(self, config) -> str:
        """transformers' layer type: its caches and mask builders read it ("full_attention", ...)."""
        return "full_attention"

    def rope_dim(self, config) -> int:
        """Dimensions per head that RoPE rotates; 0 for a design that takes no positions."""
        return config.head_dim

    def cache_elements(self, config, seq_len: int) -> int:
        """Elements one layer's cache holds for one sequence after `seq_len` tokens."""
        raise NotImplementedError

    def cache_bounded(self, config) -> bool:
        """Whether the cache stops growing with the context."""
        return False

    def attention_parameters(self, config) -> int:
        """Parameters of one layer's attention block (biases included)."""
        return sum(p.numel() for p in self.attention_class(config, 0).parameters())

    def lora_targets(self, config) -> tuple[str, ...]:
        """The attention modules a LoRA adapter targets by default (PEFT's `target_modules`)."""
        return ()

    def tp_plan(self, config) -> dict[str, str]:
        """The attention's entries in transformers' tensor-parallel plan (none: replicated)."""
        return {}

    def describe(self, config) -> str:
        """The attention dims in a few characters, for tables and model cards."""
        return self.name


ATTENTION_DESIGNS: dict[str, AttentionDesign] = {}


def register_attention_design(design: AttentionDesign) -> AttentionDesign:
    """Make `design` available as `HfAttnConfig(attention_type=design.name)`; returns it."""
    if not design.name or design.attention_class is None:
        raise ValueError("an attention design needs a name and an attention_class")
    ATTENTION_DESIGNS[design.name] = design
    return design
