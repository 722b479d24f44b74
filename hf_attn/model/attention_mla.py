"""DeepSeek-V2 multi-head latent attention (MLA), arXiv 2405.04434 §2.1.

Keys and values are rebuilt from a low-rank latent c_KV = W_DKV h (d_c = kv_lora_rank per token),
and position enters through a separate, decoupled RoPE key k^R shared by all heads (§2.1.3: RoPE
cannot be applied to keys that are up-projected from a cache, so it gets its own small key).
The cache therefore holds only `kv_lora_rank + qk_rope_head_dim` values per token and layer.

Two ways to compute the same attention (DeepSeek-V3's inference code keeps both, as "naive" and
"absorb"):

* naive: expand the latents of every position into per-head keys and values with W_UK / W_UV
  (`kv_b_proj`), then run ordinary attention through transformers' attention interface. Best for
  training and prefill, where every position's K/V is needed once and the fused kernels apply.
* absorbed (§2.1.2, "W_UK can be absorbed into W_Q, and W_UV into W_O"): fold W_UK into the query
  and W_UV into the output, and attend directly over the cached latents, as multi-query attention
  with key dim `kv_lora_rank + qk_rope_head_dim` and value dim `kv_lora_rank`. A decode step then
  costs O(S * (d_c + d_R)) per head instead of re-expanding all S cached latents
  (O(S * d_c * heads * (nope + v))), which is what transformers' DeepseekV3 does. The folded matrix
  is what `kv_b_proj` computes, so an unmerged PEFT adapter on that layer is honoured (`_kv_b_weight`).

The cache holds one entry per token, [c_KV | k^R] (as the "keys" of a transformers cache layer; the
"values" slot is zero-width), so a decode step reads it in one pass: with sdpa the heads fold into the
query rows of a single-head attention whose keys and values are both that entry (the RoPE part of the
output is dropped). What else was tried for this step, and what each measured, is in docs/performance.md
("The absorbed MLA step: what was tried"); in short, the layout here was the fastest on the CPU kernels measured.

Rule (`config.mla_absorb`): "auto" absorbs when a cache is passed and the new chunk is at most
`ABSORB_MAX_QUERY_LEN` tokens (decoding, beam steps, short speculative chunks); longer chunks
(prefill) and cache-less calls (training) expand. "always"/"never" force one path when a cache is
present; without a cache there is nothing to absorb into, so the naive path runs.

Parameter names are DeepseekV3's, so the weights load into `DeepseekV3ForCausalLM` unchanged
(with `rope_interleave=False`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .attention import eager_attention_forward
from .attention_utils import AttentionDesign, apply_rotary, masked_softmax, register_attention_design

if TYPE_CHECKING:
    from .configuration_hf_attn import HfAttnConfig

ABSORB_MAX_QUERY_LEN = 16
# The latent norms' eps of checkpoints saved before `mla_latent_norm_eps` existed (DeepSeek's reference
# code's value, whatever the block norms used); new configs take `rms_norm_eps`, as DeepseekV3 does.
LEGACY_LATENT_NORM_EPS = 1e-6


class HfAttnMLAttention(nn.Module):
    """Multi-head latent attention with a latent-only cache and absorbed decoding."""

    def __init__(self, config: HfAttnConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.q_lora_rank = config.q_lora_rank
        self.kv_lora_rank = config.kv_lora_rank
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.scaling = self.qk_head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.num_key_value_groups = 1  # the naive path expands K/V to every head

        bias = config.attention_bias
        d, h = config.hidden_size, self.num_heads
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(d, h * self.qk_head_dim, bias=False)
        else:  # low-rank query compression (§2.1.2), saves activation memory in training
            self.q_a_proj = nn.Linear(d, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = nn.RMSNorm(self.q_lora_rank, eps=config.mla_latent_norm_eps)
            self.q_b_proj = nn.Linear(self.q_lora_rank, h * self.qk_head_dim, bias=False)
        # W_DKV and W_KR in one matrix: the latent c_KV and the shared RoPE key k^R
        self.kv_a_proj_with_mqa = nn.Linear(d, self.kv_lora_rank + self.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = nn.RMSNorm(self.kv_lora_rank, eps=config.mla_latent_norm_eps)
        # W_UK and W_UV stacked per head: rows [h * (nope + v)]
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, h * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_head_dim, d, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        if self.q_lora_rank is None:
            query = self.q_proj(hidden_states)
        else:
            query = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        query = query.view(batch, seq_len, self.num_heads, self.qk_head_dim)  # (B, T, H, nope + rope)
        q_nope, q_rope = query.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)

        latent, k_rope = self.kv_a_proj_with_mqa(hidden_states).split(
            [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1
        )
        cos, sin = position_embeddings
        q_rope = apply_rotary(q_rope, cos, sin)  # (B, T, H, rope)
        k_rope = apply_rotary(k_rope.unsqueeze(2), cos, sin)  # (B, T, 1, rope): one key shared by all heads
        q_nope, q_rope = q_nope.transpose(1, 2), q_rope.transpose(1, 2)  # (B, H, T, dim)
        # One cache entry per token, [c_KV | k^R], viewed as one head so any transformers cache layer
        # stores it: (B, 1, T, r + rope). The "values" slot stays empty (zero width): the absorbed step
        # reads latent and RoPE key together, in one matmul per side (see `_absorbed_attention`).
        compressed = torch.cat((self.kv_a_layernorm(latent), k_rope.squeeze(2)), dim=-1).unsqueeze(1)
        if cache is not None:
            compressed, _ = cache.update(compressed, compressed[..., :0], self.layer_idx)  # (B, 1, S, r + rope)

        if self._absorb(cache, seq_len):
            output, weights = self._absorbed_attention(q_nope, q_rope, compressed, attention_mask)
        else:
            output, weights = self._naive_attention(q_nope, q_rope, compressed, attention_mask, **kwargs)
        output = output.reshape(batch, seq_len, self.num_heads * self.v_head_dim)
        return self.o_proj(output), weights

    def _absorb(self, cache: Cache | None, seq_len: int) -> bool:
        mode = self.config.mla_absorb
        if cache is None or mode == "never":
            return False
        return mode == "always" or seq_len <= ABSORB_MAX_QUERY_LEN

    def _naive_attention(self, q_nope, q_rope, compressed, attention_mask, **kwargs):
        """Expand latents to per-head K/V, then attend through the configured kernel."""
        batch, _, kv_len, _ = compressed.shape
        latent, k_rope = compressed.split(
            [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1
        )  # (B, 1, S, r), (B, 1, S, rope)
        kv = self.kv_b_proj(latent.squeeze(1))  # (B, S, H * (nope + v))
        kv = kv.view(batch, kv_len, self.num_heads, -1).transpose(1, 2)  # (B, H, S, nope + v)
        k_nope, value = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        query = torch.cat((q_nope, q_rope), dim=-1)  # (B, H, T, nope + rope)
        key = torch.cat((k_nope, k_rope.expand(-1, self.num_heads, -1, -1)), dim=-1)  # (B, H, S, nope + rope)

        pad = self.qk_head_dim - self.v_head_dim
        if self.config._attn_implementation == "sdpa" and pad > 0:
            # torch's fused (flash) sdpa kernels need equal q/k and v head dims; without them sdpa
            # falls back to the unfused math path, 4x slower for a 2048-token CPU prefill here.
            value = nn.functional.pad(value, (0, pad))  # (B, H, S, nope + rope)
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
            **kwargs,
        )
        return output[..., : self.v_head_dim], weights  # (B, T, H, v), weights

    def _kv_b_weight(self, like: torch.Tensor) -> torch.Tensor:
        """The matrix that `kv_b_proj` applies, (H * (nope + v), r), read off the module itself.

        For a plain `nn.Linear` that is its weight. A wrapped layer (a PEFT LoRA adapter that is not
        merged, or any other affine wrapper) computes W x + delta(x) in its forward, and `.weight` holds
        only W, so the effective matrix is recovered from the forward: f(I) - f(0) = (W + delta)^T.
        That costs one (r, r) input per decode step and layer, far less than the naive path's
        expansion of every cached latent, and only while such a wrapper is present.
        """
        if type(self.kv_b_proj) is nn.Linear:
            return self.kv_b_proj.weight
        eye = torch.eye(self.kv_lora_rank, dtype=like.dtype, device=like.device)  # (r, r): one latent per row
        zero = eye.new_zeros(1, self.kv_lora_rank)
        return (self.kv_b_proj(eye) - self.kv_b_proj(zero)).T  # (H * (nope + v), r)

    def _absorbed_attention(self, q_nope, q_rope, compressed, attention_mask):
        """Attend over the cached latents directly (MQA with one latent "head" shared by all heads).

        score(t, s) = q_nope W_UK c_s + q_rope k^R_s = [q_nope W_UK | q_rope] . [c_s | k^R_s], and
        out = W_UV (sum_s p(t, s) c_s), so the per-head keys and values are never formed. All heads
        share the one cached entry per token, so the heads fold into the query rows: with sdpa that is
        one fused pass over the cache (scores, softmax and values blockwise), which reads each cached
        entry once; the values are the whole entry (the RoPE part of the output is dropped), which
        keeps the kernel's rows contiguous. Other kernels run the same product as two matmuls.
        """
        batch, heads, seq_len, _ = q_nope.shape
        kv_len, entry = compressed.shape[2], compressed.shape[3]
        w_kv = self._kv_b_weight(compressed).view(heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        w_uk, w_uv = w_kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)  # (H, nope, r), (H, v, r)

        q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # (B, H, T, r): W_UK folded into q
        query = torch.cat((q_latent, q_rope), dim=-1)  # (B, H, T, r + rope)
        query = query.reshape(batch, 1, heads * seq_len, entry)  # (B, 1, H * T, r + rope): heads fold into rows

        if attention_mask is None and seq_len > 1:
            # transformers drops the mask for sdpa only where sdpa's upper-left `is_causal` is right:
            # q_len == kv_len, or a prefill into an empty static cache whose tail slots must stay
            # unseen. Reproduce that alignment: query i sees keys 0..i.
            attention_mask = torch.ones(seq_len, kv_len, dtype=torch.bool, device=query.device).tril()[None, None]
        if attention_mask is not None:
            attention_mask = attention_mask[..., :kv_len]
            if seq_len > 1:  # one mask row per query token, repeated for every head: (b, 1, H * T, S)
                rows = attention_mask.shape[0]
                attention_mask = attention_mask.unsqueeze(2).expand(rows, 1, heads, seq_len, kv_len)
                attention_mask = attention_mask.reshape(rows, 1, heads * seq_len, kv_len)

        if self.config._attn_implementation == "sdpa":
            out_entry = nn.functional.scaled_dot_product_attention(
                query,
                compressed,
                compressed,
                attn_mask=attention_mask,
                dropout_p=self.attention_dropout if self.training else 0.0,
                scale=self.scaling,
            )  # (B, 1, H * T, r + rope)
            weights = None
        else:
            scores = torch.matmul(query, compressed.transpose(2, 3)) * self.scaling  # (B, 1, H * T, S)
            weights = masked_softmax(scores, attention_mask, q_nope.dtype, self.attention_dropout, self.training)
            out_entry = torch.matmul(weights, compressed)  # (B, 1, H * T, r + rope)
            weights = weights.view(batch, heads, seq_len, kv_len)
        out_latent = out_entry[..., : self.kv_lora_rank].reshape(
            batch, heads, seq_len, self.kv_lora_rank
        )  # (B, H, T, r)
        output = torch.einsum("bhtr,hvr->bthv", out_latent, w_uv)  # (B, T, H, v): W_UV folded into o
        return output, weights


LATENT_PROJECTIONS = ("kv_a_proj_with_mqa", "kv_b_proj", "o_proj")


class MLADesign(AttentionDesign):
    """MLA: a cache of `kv_lora_rank + qk_rope_head_dim` values per token and layer, whatever the head count.

    Defaults follow DeepSeek-V2's ratios to the head dim d_h: `kv_lora_rank = 4 d_h`, `qk_rope_head_dim =
    d_h / 2`, `qk_nope_head_dim = v_head_dim = d_h`, no query compression (`q_lora_rank=None`).
    """

    name = "mla"
    title = "MLA"
    attention_class = HfAttnMLAttention
    fields = (
        "kv_lora_rank",
        "q_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "mla_latent_norm_eps",
    )
    export_formats = ("deepseek_v3", "gguf")

    def derive(self, config: HfAttnConfig) -> None:
        d_h = config.head_dim
        if config.num_key_value_heads is None:
            config.num_key_value_heads = config.num_attention_heads
        if config.num_key_value_heads != config.num_attention_heads:
            raise ValueError(
                f"num_key_value_heads ({config.num_key_value_heads}) must equal num_attention_heads "
                f"({config.num_attention_heads}) for 'mla': every head gets its own up-projected K/V."
            )
        for name, default in (
            ("kv_lora_rank", 4 * d_h),
            ("qk_rope_head_dim", max(2, d_h // 2 - (d_h // 2) % 2)),
            ("qk_nope_head_dim", d_h),
            ("v_head_dim", d_h),
            ("mla_latent_norm_eps", config.rms_norm_eps),  # DeepseekV3's latent norms use the model's eps
        ):
            if getattr(config, name) is None:
                setattr(config, name, default)
        if not config.mla_latent_norm_eps > 0:
            raise ValueError(f"mla_latent_norm_eps must be positive, got {config.mla_latent_norm_eps}.")
        config._check_positive("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
        if config.q_lora_rank is not None:
            config._check_positive("q_lora_rank")
        if config.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim ({config.qk_rope_head_dim}) must be even: RoPE rotates pairs.")

    def rope_dim(self, config: HfAttnConfig) -> int:
        return config.qk_rope_head_dim

    def cache_elements(self, config: HfAttnConfig, seq_len: int) -> int:
        return (config.kv_lora_rank + config.qk_rope_head_dim) * seq_len

    def lora_targets(self, config: HfAttnConfig) -> tuple[str, ...]:
        query = ("q_proj",) if config.q_lora_rank is None else ("q_a_proj", "q_b_proj")
        return query + LATENT_PROJECTIONS

    def attention_parameters(self, config: HfAttnConfig) -> int:
        d, h, b = config.hidden_size, config.num_attention_heads, int(config.attention_bias)
        qk = config.qk_nope_head_dim + config.qk_rope_head_dim
        if config.q_lora_rank is None:
            q = d * h * qk
        else:
            q = (d + b) * config.q_lora_rank + config.q_lora_rank + config.q_lora_rank * h * qk
        kv_a = (d + b) * (config.kv_lora_rank + config.qk_rope_head_dim) + config.kv_lora_rank
        kv_b = config.kv_lora_rank * h * (config.qk_nope_head_dim + config.v_head_dim)
        o = (h * config.v_head_dim + b) * d
        return q + kv_a + kv_b + o

    # tp_plan: none. DeepseekV3's plan shards only the MLP: the latent and the shared RoPE key feed every
    # head, and the absorbed decode folds kv_b_proj across heads.

    def describe(self, config: HfAttnConfig) -> str:
        return f"d_c {config.kv_lora_rank} + d_R {config.qk_rope_head_dim}"


register_attention_design(MLADesign())
