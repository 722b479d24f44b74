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
