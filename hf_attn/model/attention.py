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

from collections.abc import Callable

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .attention_utils import apply_rotary, masked_softmax
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
