"""Performer attention: FAVOR+ (Choromanski et al. 2021, arXiv 2009.14794), causal, with a constant decode state.

Softmax attention weighs value j for query i by exp(q_i . k_j / sqrt(d)). FAVOR+ writes that kernel
as an expectation over random vectors w ~ N(0, I_d) and estimates it with m positive features
(§2.3, Lemma 1), with x = q or k scaled by d^-1/4:

    phi(x)_r = exp(w_r . x - |x|^2 / 2) / sqrt(m),      exp(q . k / sqrt(d)) ~ phi(q) . phi(k)

so the causal output is a ratio of prefix sums, with no T x T matrix:

    out_i = phi(q_i) S_i / phi(q_i) z_i,      S_i = sum_{j<=i} phi(k_j) v_j^T,   z_i = sum_{j<=i} phi(k_j)

The w_r are orthogonal in blocks of d (§2.4; the rows rescaled to Gaussian norms) and stored as the
persistent buffer `projection`, so a saved model computes the same thing when reloaded. Training
redraws them every `performer_redraw_interval` forward passes from a seeded schedule (draw n uses
the layer's `feature_seed` and n); evaluation never redraws.

Training runs in chunks of `performer_chunk_size` (the paper's §B.1 prefix sums, blocked): inside a
chunk the masked C x C kernel matrix is exact, and the state (S, z) carries the prefix between
chunks, so memory grows linearly with T. Decoding keeps only (S, z) per layer and K/V head, stored as
one tensor [S | z] of shape (B, kv_heads, m, head_dim + 1) in transformers' "linear_attention" cache
layer (`Cache.update_recurrent_state`), which generate() reorders for beam search like Mamba's.

Stabiliser. The paper subtracts, inside the exp, each query's max over features (it cancels in the
ratio) and the max over all keys. A causal decode state cannot know the maximum over keys still to
come, so keys instead subtract the per-feature constant |w_r|^2 / 2, which bounds the exponent:
w_r . k - |k|^2 / 2 - |w_r|^2 / 2 = -|w_r - k|^2 / 2 <= 0. Queries add it back (exact: the kernel is
unchanged) and then subtract their own max, as in the paper. Feature maps and sums run in float32.

RoPE is left out. RoFormer §3.4.3 rotates phi(q), phi(k) in the numerator only; the weights then are
no longer positive and the numerator is no longer bounded by the denominator, which gives up the
property FAVOR+ exists for (positive weights, a stable ratio). A causal model still learns
order from the mask itself (Haviv et al. 2022, "Transformer language models without positional encodings
still learn positional information"), and without positions the decode state needs no token count.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin

from .attention import ATTENTION_PROJECTIONS, four_projection_parameters
from .attention_utils import AttentionDesign, register_attention_design

if TYPE_CHECKING:
    from .configuration_hf_attn import HfAttnConfig

MAX_LAYERS = 1 << 12  # a layer's seed is performer_seed * MAX_LAYERS + layer index


def orthogonal_gaussian(num_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(num_features, dim) random projection: orthogonal blocks of `dim` rows, each row rescaled to a Gaussian norm.

    FAVOR+ §2.4 (orthogonal random features): lower estimator variance than i.i.d. rows, same mean.
    """
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        # float32 whatever the default dtype: QR has no half-precision CPU kernel
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float32, device="cpu")
        q, r = torch.linalg.qr(gaussian)  # (dim, dim), orthonormal columns
        # QR's sign convention fixes the sign of R's diagonal, which makes Q's columns point one way;
        # multiplying by those signs gives a uniformly (Haar) distributed Q, and an unbiased estimator.
        blocks.append((q * torch.sign(torch.diagonal(r))).T)
    rows = torch.cat(blocks)[:num_features]  # (m, dim)
    gaussian = torch.randn(num_features, dim, generator=generator, dtype=torch.float32, device="cpu")
    norms = gaussian.norm(dim=1, keepdim=True)  # (m, 1): chi(dim)
    return rows * norms


def favor_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool) -> torch.Tensor:
    """Positive random features of `x` (..., T, d), already scaled by d^-1/4, as (..., T, m) in float32.

    Stabilised (see the module docstring): keys by the bound |w_r|^2 / 2, queries by their own max.
    Both drop the 1/sqrt(m) factor, which cancels in the output ratio.
    """
    x, projection = x.float(), projection.float()
    logits = x @ projection.T - 0.5 * (x * x).sum(-1, keepdim=True)  # (..., T, m): w_r . x - |x|^2 / 2
    half_norms = 0.5 * (projection * projection).sum(-1)  # (m,)
    if not is_query:
        return (logits - half_norms).exp()  # = exp(-|w_r - k|^2 / 2) <= 1
    logits = logits + half_norms
    return (logits - logits.amax(-1, keepdim=True).detach()).exp()


def causal_linear_attention(
    query_features: torch.Tensor,
    key_features: torch.Tensor,
    values: torch.Tensor,
    chunk_size: int,
    state: torch.Tensor | None = None,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal sum_{j<=i} (phi(q_i) . phi(k_j)) v_j for every i, chunk by chunk, continuing from `state`.

    query_features (B, kv, g, T, m): g query heads share each K/V head; key_features (B, kv, T, m);
    values (B, kv, T, e); state (B, kv, m, e) = sum of phi(k) v^T over the positions before these
    (None: no positions before). Returns the outputs (B, kv, g, T, e) and, if `return_state`, the
    state after the last position (a forward pass without a cache skips the last update).
    """
    seq_len = query_features.shape[3]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=values.device).tril()
    outputs = []
    for start in range(0, seq_len, chunk_size):
        q = query_features[:, :, :, start : start + chunk_size]  # (B, kv, g, C, m)
        k = key_features[:, :, start : start + chunk_size]  # (B, kv, C, m)
        v = values[:, :, start : start + chunk_size]  # (B, kv, C, e)
        size = k.shape[2]
        scores = torch.einsum("bhgtm,bhsm->bhgts", q, k)  # (B, kv, g, C, C): the exact kernel inside the chunk
        scores = scores.masked_fill(~causal[:size, :size], 0.0)
        output = torch.einsum("bhgts,bhse->bhgte", scores, v)
        if state is not None:  # the prefix, through the carried state
            output = output + torch.einsum("bhgtm,bhme->bhgte", q, state)
        outputs.append(output)
        if return_state or start + chunk_size < seq_len:
            update = torch.einsum("bhsm,bhse->bhme", k, v)  # (B, kv, m, e)
            state = update if state is None else state + update
    return torch.cat(outputs, dim=3), state


def _cached_state(cache: Cache, layer_idx: int) -> torch.Tensor | None:
    """This layer's [S | z] state from the cache (None before the first token); refuses a cache of K/V layers."""
    if layer_idx >= len(cache.layers) or not isinstance(cache.layers[layer_idx], LinearAttentionCacheLayerMixin):
        raise ValueError(
            "attention_type='performer' keeps a constant-size state in transformers' 'linear_attention' cache "
            "layers: pass DynamicCache(config=model.config) (or let generate() build it), not a key/value cache."
        )
    layer = cache.layers[layer_idx]
    # `Cache.get_recurrent_state` answers None until a conv state was written (Mamba's convention); this
    # layer has none, so read the state itself. After `reset()` it is zeros, which is the empty prefix.
    return layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None


class HfAttnPerformerAttention(nn.Module):
    """FAVOR+ causal linear attention with Llama's q/k/v/o projections; K/V heads may be shared as in GQA."""

    def __init__(self, config: HfAttnConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.num_features = config.performer_features
        self.chunk_size = config.performer_chunk_size
        self.redraw_interval = config.performer_redraw_interval
        self.is_causal = True

        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        # Saved with the weights: the features in use, the seed of this layer's schedule, and its position.
        # Drawn here, from the config's seed and the layer index, so that a model built on the meta device and
        # initialised later (`_init_weights`) gets the same features as one built directly; a checkpoint's
        # saved buffers replace them on load.
        self.layer_seed = config.performer_seed * MAX_LAYERS + layer_idx
        self.register_buffer("projection", self.draw_features(self.layer_seed, draw=0))
        self.register_buffer("feature_seed", torch.tensor(self.layer_seed, dtype=torch.long, device="cpu"))
        self.register_buffer("forward_steps", torch.zeros((), dtype=torch.long))

    def cached_tokens(self, cache: Cache) -> int:
        """Positions (padding included) this layer's state in `cache` has read; 0 before the first token."""
        state = _cached_state(cache, self.layer_idx)
        if state is None:
            return 0
        return int(state[:, 0, -1, -1].max())  # (B, kv, m + 1, d + 1): the count feature's ones column

    def draw_features(self, seed: int, draw: int) -> torch.Tensor:
        """Projection number `draw` of the schedule seeded by `seed`: (performer_features, head_dim), float32, CPU."""
        # torch's CPU generator keeps only the low 32 bits of a seed: hash (seed, draw) into them, so that no
        # two layers, seeds or draws share features
        digest = hashlib.blake2b(f"{seed}:{draw}".encode(), digest_size=4).digest()
        generator = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little"))
        return orthogonal_gaussian(self.num_features, self.head_dim, generator)

    @torch.no_grad()
    def advance_features(self) -> None:
        """Count one training forward pass; redraw the projection every `performer_redraw_interval` of them."""
        step = int(self.forward_steps)
        if self.redraw_interval and step and step % self.redraw_interval == 0:
            features = self.draw_features(int(self.feature_seed), step // self.redraw_interval)
            self.projection.copy_(features)
        self.forward_steps += 1

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """`attention_mask` is the (B, T) padding mask of the new tokens (transformers' recurrent-attention mask:
        1 = a real token; None = none padded); positions are unused."""
        batch, seq_len, _ = hidden_states.shape
        kv, groups, d = self.num_key_value_heads, self.num_key_value_groups, self.head_dim
        scale = d**-0.25  # q . k / sqrt(d) = (q d^-1/4) . (k d^-1/4)
        # (B, T, kv * g * d) -> (B, T, kv, g, d) -> (B, kv, g, T, d): query head kv_i * g + j uses K/V head kv_i
        query = self.q_proj(hidden_states).view(batch, seq_len, kv, groups, d).permute(0, 2, 3, 1, 4)
        key = self.k_proj(hidden_states).view(batch, seq_len, kv, d).transpose(1, 2)  # (B, kv, T, d)
        value = self.v_proj(hidden_states).view(batch, seq_len, kv, d).transpose(1, 2)  # (B, kv, T, d)

        query_features = favor_features(query * scale, self.projection, is_query=True)  # (B, kv, g, T, m)
        key_features = favor_features(key * scale, self.projection, is_query=False)  # (B, kv, T, m)
        if attention_mask is not None:  # padded positions add nothing to the state
            key_features = key_features * attention_mask[:, None, :, None].to(key_features.dtype)
        if cache is not None:
            # One more feature, 1 for every key and 0 for every query: it changes no output, and its entry in
            # the state's last column counts the positions read (`cached_tokens`), which generate() needs in
            # order to continue from a returned cache (it can ask no length of a linear-attention cache).
            key_features = nn.functional.pad(key_features, (0, 1), value=1.0)
            query_features = nn.functional.pad(query_features, (0, 1), value=0.0)
        # (B, kv, T, d + 1): a column of ones makes the last output column the denominator phi(q) . z
        values = torch.cat((value.float(), value.new_ones(batch, kv, seq_len, 1, dtype=torch.float32)), dim=-1)

        state = _cached_state(cache, self.layer_idx) if cache is not None else None
        output, state = causal_linear_attention(
            query_features, key_features, values, self.chunk_size, state, return_state=cache is not None
        )
        if cache is not None:
            cache.update_recurrent_state(state, self.layer_idx)
        # a query with no key before it (left padding) has 0 / 0: clamping gives 0
        denominator = output[..., d:].clamp_min(torch.finfo(torch.float32).tiny)
        output = (output[..., :d] / denominator).to(hidden_states.dtype)  # (B, kv, g, T, d)
        output = output.permute(0, 3, 1, 2, 4).reshape(batch, seq_len, -1)  # (B, T, heads * d)
        return self.o_proj(output), None


# Defaults (see `PerformerDesign`).
REDRAW_INTERVAL = 1000
CHUNK_SIZE = 64


class PerformerDesign(AttentionDesign):
    """FAVOR+: a constant decode state of `num_key_value_heads * (performer_features + 1) * (head_dim + 1)`.

    Defaults: `performer_features` m = 4 d_h (the paper's m = d_h log d_h is 111 for d_h = 32; 128 = 4 d_h
    costs the same), redraw every 1000 training forward passes, causal chunks of 64 positions, seed 0;
    `num_key_value_heads` defaults to the head count and may divide it (the state is kept per K/V head).
    """

    name = "performer"
    title = "FAVOR+"
    attention_class = HfAttnPerformerAttention
    fields = ("performer_features", "performer_redraw_interval", "performer_chunk_size", "performer_seed")
    has_attention_weights = False  # no attention matrix is ever formed

    def derive(self, config: HfAttnConfig) -> None:
        heads = config.num_attention_heads
        if config.num_key_value_heads is None:
            config.num_key_value_heads = heads
        config._check_positive("num_key_value_heads")
        if heads % config.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads ({config.num_key_value_heads}) must divide num_attention_heads ({heads})."
            )
        for name, default in (
            ("performer_features", 4 * config.head_dim),
            ("performer_redraw_interval", REDRAW_INTERVAL),
            ("performer_chunk_size", CHUNK_SIZE),
            ("performer_seed", 0),
        ):
            if getattr(config, name) is None:
                setattr(config, name, default)
        config._check_positive("performer_features", "performer_chunk_size")
        seed = config.performer_seed
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**20:
            raise ValueError(f"performer_seed must be an integer in [0, 2**20), got {seed!r}.")
        interval = config.performer_redraw_interval
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 0:
            raise ValueError(f"performer_redraw_interval must be an integer >= 0 (0 = never), got {interval!r}.")
        if config.attention_dropout:
            raise ValueError(
                f"attention_dropout={config.attention_dropout} with attention_type='performer': "
                "FAVOR+ forms no attention weights to drop."
            )

    def layer_type(self, config: HfAttnConfig) -> str:
        return "linear_attention"  # transformers' constant-size state layers

    def rope_dim(self, config: HfAttnConfig) -> int:
        return 0  # no RoPE (see the module docstring)

    def cache_elements(self, config: HfAttnConfig, seq_len: int) -> int:
        # running sums of phi(k) v^T and phi(k), plus the row that counts positions read
        state = config.num_key_value_heads * (config.performer_features + 1) * (config.head_dim + 1)
        return state if seq_len else 0

    def cache_bounded(self, config: HfAttnConfig) -> bool:
        return True

    def attention_parameters(self, config: HfAttnConfig) -> int:
        return four_projection_parameters(config)

    def lora_targets(self, config: HfAttnConfig) -> tuple[str, ...]:
        return ATTENTION_PROJECTIONS  # the random projection is a buffer, not adapted

    # tp_plan: none; export_formats: none (no transformers or llama.cpp equivalent).

    def describe(self, config: HfAttnConfig) -> str:
        return f"m {config.performer_features}"


register_attention_design(PerformerDesign())
