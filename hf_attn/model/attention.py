"""Multi-head, grouped-query and multi-query attention: one class, the K/V head count picks the variant.

```
MHA  (kv heads = heads)      GQA  (heads % kv heads == 0)     MQA  (kv heads = 1)
q: ▢ ▢ ▢ ▢ ▢ ▢ ▢ ▢           q: ▢ ▢ ▢ ▢ ▢ ▢ ▢ ▢               q: ▢ ▢ ▢ ▢ ▢ ▢ ▢ ▢
   | | | | | | | |              └┬┘ └┬┘ └┬┘ └┬┘                  └──────┬──────┘
k: ▢ ▢ ▢ ▢ ▢ ▢ ▢ ▢           k:  ▢   ▢   ▢   ▢                k:       ▢
```

The parameter names and shapes are exactly `LlamaAttention`'s, so the weights load into
`LlamaForCausalLM` unchanged. The attention kernel (eager, sdpa, flash) is picked separately,
through transformers' attention interface and `config._attn_implementation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .attention_utils import AttentionDesign, apply_rotary, masked_softmax, register_attention_design

if TYPE_CHECKING:
    from .configuration_hf_attn import HfAttnConfig


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention in plain torch ops; returns (B, T, heads, v_dim) and the weights."""
    groups = module.num_key_value_groups
    if groups > 1:
        # (B, kv_heads, S, d) -> (B, heads, S, d): each K/V head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, heads, T, S)
    weights = masked_softmax(scores, attention_mask, query.dtype, dropout, module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, heads, v_dim)
    return output, weights


class HfAttnAttention(nn.Module):
    """MHA, GQA or MQA, decided by `config.num_key_value_heads`."""

    def __init__(self, config: HfAttnConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True

        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        cos, sin = position_embeddings
        # (B, T, n, head_dim); RoPE is applied before the transpose, broadcasting cos/sin over heads
        query = apply_rotary(self.q_proj(hidden_states).view(batch, seq_len, -1, self.head_dim), cos, sin)
        key = apply_rotary(self.k_proj(hidden_states).view(batch, seq_len, -1, self.head_dim), cos, sin)
        value = self.v_proj(hidden_states).view(batch, seq_len, -1, self.head_dim)
        # (B, T, n, head_dim) -> (B, n, T, head_dim)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)

        if cache is not None:
            # Returns every cached position for this layer: (B, kv_heads, past + T, head_dim)
            key, value = cache.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.config.sliding_window,  # as Mistral: flash kernels window by it, others by the mask
            **kwargs,
        )
        output = output.reshape(batch, seq_len, -1)  # (B, T, heads * head_dim)
        return self.o_proj(output), weights


# Llama's tensor-parallel plan: heads sharded column-wise (q/k/v), gathered row-wise (o).
ATTENTION_TP_PLAN = {
    "layers.*.self_attn.q_proj": "colwise",
    "layers.*.self_attn.k_proj": "colwise",
    "layers.*.self_attn.v_proj": "colwise",
    "layers.*.self_attn.o_proj": "rowwise",
}
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def four_projection_parameters(config: HfAttnConfig) -> int:
    """Parameters of Llama's q/k/v/o projections (biases included)."""
    d, b = config.hidden_size, int(config.attention_bias)
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    return (d + b) * (q + 2 * kv) + (q + b) * d


def key_value_heads_type(num_key_value_heads: int, num_attention_heads: int) -> str:
    """The `attention_type` a K/V head count names: "mha" (one per query head), "mqa" (one), else "gqa"."""
    if num_key_value_heads == num_attention_heads:
        return "mha"
    return "mqa" if num_key_value_heads == 1 else "gqa"


class KeyValueHeadsDesign(AttentionDesign):
    """MHA, GQA and MQA: one class; the design fixes the default (and allowed) number of K/V heads.

    `sliding_window` is their option: each query sees the last `sliding_window` positions, as Mistral.
    """

    attention_class = HfAttnAttention
    supports_sliding_window = True
    export_formats = ("llama", "mistral", "gguf")  # with a window, Mistral only (the exporter checks)

    def __init__(self, name: str):
        self.name = name
        self.title = name.upper()

    def derive(self, config: HfAttnConfig) -> None:
        heads = config.num_attention_heads
        if config.num_key_value_heads is None:
            config.num_key_value_heads = self._default_kv_heads(heads)
        kv = config.num_key_value_heads
        config._check_positive("num_key_value_heads")
        if self.name == "mha" and kv != heads:
            raise ValueError(f"num_key_value_heads ({kv}) must equal num_attention_heads ({heads}) for 'mha'.")
        if self.name == "mqa" and kv != 1:
            raise ValueError(f"num_key_value_heads ({kv}) must be 1 for 'mqa'.")
        if heads % kv:
            raise ValueError(f"num_key_value_heads ({kv}) must divide num_attention_heads ({heads}) for 'gqa'.")
        if config.head_dim % 2:
            raise ValueError(f"head_dim ({config.head_dim}) must be even: RoPE rotates pairs of dimensions.")

    def _default_kv_heads(self, heads: int) -> int:
        if self.name == "mha":
            return heads
        if self.name == "mqa":
            return 1
        group = next((g for g in (4, 2) if heads % g == 0 and heads // g > 1), None)  # groups of 4 where possible
        if group is None:
            raise ValueError(
                f"num_key_value_heads must be set for attention_type='gqa' with {heads} heads: "
                "no group size of 4 or 2 leaves more than one key/value head."
            )
        return heads // group

    def layer_type(self, config: HfAttnConfig) -> str:
        return "full_attention" if config.sliding_window is None else "sliding_attention"  # transformers' names

    def cache_elements(self, config: HfAttnConfig, seq_len: int) -> int:
        # transformers' sliding-window layer keeps the last `sliding_window - 1` tokens: the next token's own
        # key completes the window
        tokens = seq_len if config.sliding_window is None else min(seq_len, config.sliding_window - 1)
        return 2 * config.num_key_value_heads * config.head_dim * tokens

    def cache_bounded(self, config: HfAttnConfig) -> bool:
        return config.sliding_window is not None

    def attention_parameters(self, config: HfAttnConfig) -> int:
        return four_projection_parameters(config)

    def lora_targets(self, config: HfAttnConfig) -> tuple[str, ...]:
        return ATTENTION_PROJECTIONS

    def tp_plan(self, config: HfAttnConfig) -> dict[str, str]:
        return ATTENTION_TP_PLAN

    def describe(self, config: HfAttnConfig) -> str:
        dims = f"kv {config.num_key_value_heads}"
        return dims if config.sliding_window is None else f"{dims}, window {config.sliding_window}"


for _name in ("mha", "gqa", "mqa"):
    register_attention_design(KeyValueHeadsDesign(_name))
