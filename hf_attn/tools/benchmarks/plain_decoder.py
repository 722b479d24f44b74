"""Bare PyTorch decoders for the training benchmark: hf_attn's math without the framework, and nanoGPT's.

`PlainDecoder` computes exactly what `HfAttnForCausalLM` computes for MHA/GQA/MQA (RMSNorm, RoPE in
the non-interleaved layout, SwiGLU, `F.scaled_dot_product_attention(is_causal=True)`, the tied or
untied head, shifted cross-entropy), with none of transformers' machinery: no mask builder, no
cache, no output capture, no loss wrapper, RoPE tables built once. Its parameter names are
hf_attn's, so `PlainDecoder.from_hf_attn(model)` copies the weights with `load_state_dict`; timed
side by side with hf_attn it measures the framework's own overhead (`scripts/bench_train.py`).

`NanoGPTStyleDecoder` is the other baseline: nanoGPT's architecture (LayerNorm, learned positions,
GELU MLP, tied head) at the same width and depth, so the benchmark can split hf_attn's distance to
nanoGPT into architecture (plain vs nanoGPT) and framework (hf_attn vs plain).

Neither takes an attention mask or a cache: they train on packed, unpadded batches only.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...model.attention import KeyValueHeadsDesign
from ...model.configuration_hf_attn import HfAttnConfig


class PlainOutput(NamedTuple):
    """What the training step reads: `.logits` (B, T, vocab) and `.loss` (None without labels)."""

    logits: torch.Tensor
    loss: torch.Tensor | None


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy of position t's logits against labels[t + 1], in float32; -100 is ignored."""
    if labels is None:
        return None
    # (B, T - 1, vocab) -> (B * (T - 1), vocab): position t predicts token t + 1
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


class PlainAttention(nn.Module):
    """Causal self-attention with RoPE on queries and keys; K/V heads may be fewer than query heads."""

    def __init__(self, config: HfAttnConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.dropout = config.attention_dropout
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q = self.q_proj(x).view(batch, seq_len, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(batch, seq_len, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, d)
        v = self.v_proj(x).view(batch, seq_len, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, d)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            enable_gqa=self.kv_heads != self.heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))  # (B, T, H * d)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: RoPE's non-interleaved layout."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class PlainMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: HfAttnConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PlainBlock(nn.Module):
    """x + attn(rmsnorm(x)), then x + mlp(rmsnorm(x))."""

    def __init__(self, config: HfAttnConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = PlainAttention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = PlainMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class PlainTrunk(nn.Module):
    """Embeddings, blocks, final norm; holds the RoPE tables, computed once (as gpt-fast and nanoGPT do)."""

    def __init__(self, config: HfAttnConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(PlainBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        dim, theta = config.head_dim, config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # (d / 2,)
        freqs = torch.arange(config.max_position_embeddings, dtype=torch.float32)[:, None] * inv_freq  # (T, d / 2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (T, d)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        seq_len = input_ids.shape[1]
        cos, sin = self.cos[:seq_len].to(x.dtype), self.sin[:seq_len].to(x.dtype)  # (T, d): broadcast over B, H
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class PlainDecoder(nn.Module):
    """hf_attn's MHA/GQA/MQA decoder in bare PyTorch, for timing (see the module docstring)."""

    def __init__(self, config: HfAttnConfig):
        super().__init__()
        if type(config.design) is not KeyValueHeadsDesign:  # its own copy of exactly that class's computation
            raise ValueError(f"attention_type: PlainDecoder implements mha/gqa/mqa, not {config.attention_type!r}")
        if getattr(config, "sliding_window", None) is not None:
            raise ValueError("sliding_window: PlainDecoder implements full causal attention only")
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act: PlainDecoder implements 'silu' (SwiGLU), not {config.hidden_act!r}")
        self.config = config
        self.model = PlainTrunk(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def from_hf_attn(cls, model: nn.Module) -> "PlainDecoder":
        """A `PlainDecoder` with a copy of `model`'s (an `HfAttnForCausalLM`) weights, dtype and train/eval mode."""
        plain = cls(model.config).to(device=model.device, dtype=model.dtype)
        plain.load_state_dict(model.state_dict(), strict=True)
        return plain.train(model.training)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> PlainOutput:
        """Logits (B, T, vocab) of `input_ids` (B, T), and the shifted loss when `labels` are given."""
        logits = self.lm_head(self.model(input_ids))
        return PlainOutput(logits, causal_lm_loss(logits, labels))


class NanoGPTStyleBlock(nn.Module):
    """nanoGPT's block: x + attn(layernorm(x)), then x + mlp(layernorm(x)); no RoPE, GELU MLP."""

    def __init__(self, hidden_size: int, heads: int, mlp_size: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(hidden_size, bias=False), nn.LayerNorm(hidden_size, bias=False)
        self.c_attn = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.c_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_size, bias=False), nn.GELU(), nn.Linear(mlp_size, hidden_size, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, width = x.shape
        # (B, T, 3 * C) -> 3 x (B, T, H, C / H) -> 3 x (B, H, T, C / H)
        qkv = self.c_attn(self.ln_1(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, seq_len, self.heads, -1).transpose(1, 2) for t in qkv)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(out.transpose(1, 2).reshape(batch, seq_len, width))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))


class NanoGPTStyleDecoder(nn.Module):
    """nanoGPT's architecture (learned positions, LayerNorm, 4x GELU MLP, tied head) at a config's width and depth.

    Takes `HfAttnConfig`'s vocab_size, hidden_size, num_hidden_layers, num_attention_heads and
    max_position_embeddings; the MLP is 4 x hidden_size wide, as in GPT-2.
    """

    def __init__(self, config: HfAttnConfig):
        super().__init__()
        width = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, width)
        self.wpe = nn.Embedding(config.max_position_embeddings, width)
        self.h = nn.ModuleList(
            NanoGPTStyleBlock(width, config.num_attention_heads, 4 * width) for _ in range(config.num_hidden_layers)
        )
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for param in self.parameters():
            if param.dim() == 2:
                nn.init.normal_(param, std=config.initializer_range)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> PlainOutput:
        """Logits (B, T, vocab) of `input_ids` (B, T), and the shifted loss when `labels` are given."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return PlainOutput(logits, causal_lm_loss(logits, labels))


__all__ = ["NanoGPTStyleDecoder", "PlainDecoder", "PlainOutput", "causal_lm_loss"]
