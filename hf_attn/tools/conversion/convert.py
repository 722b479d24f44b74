"""Convert a trained MHA/GQA/MQA decoder (hf_attn, or any `LlamaForCausalLM`) to DeepSeek's MLA.

The result is an ordinary hf_attn MLA model: one latent of `kv_lora_rank` and one RoPE key of
`qk_rope_head_dim` per token and layer, shared by all heads, so it decodes with absorbed attention,
caches only the latent, and exports with `to_deepseek_v3`. Everything outside attention (embeddings,
MLPs, norms, head) and `o_proj` are copied unchanged. Per layer, from the source's q/k/v weights:

1. RoPE into one shared key (TransMLA's RoRoPE, arXiv 2502.07864 §4.1). RoPE turns every frequency
   pair of every K/V head by the same angle, so any orthogonal mix of the K/V heads within one pair
   commutes with it. Per pair, the principal direction u (over K/V heads) of the keys becomes the
   shared RoPE key k^R = sum_g u_g k_g; each query head's RoPE part is its pair scaled by u_g of its
   K/V head. What is left of the keys (k_g - u_g k^R, and the pairs not kept) loses its rotation and
   becomes the "nope" key: the only approximation besides the rank. An MQA source keeping every pair
   loses nothing here.
2. Which pairs keep RoPE (MHA2MLA's partial RoPE, arXiv 2502.14837 §3.1). hf_attn's MLA rotates its
   j-th pair at theta^(-2j / d_R), so it can reproduce the source's frequencies i = j * s exactly,
   for a stride s, by setting the converted model's rope_theta to theta^(s * d_R / d_h). The stride
   is chosen (unless given) by MHA2MLA's 2-norm criterion, weighted by how much a pair actually turns
   within the context: sum over kept pairs of |q_pair| |k^R_pair| mean_t |2 sin(t theta_i / 2)|
   (low frequencies barely turn, so they lose little by dropping RoPE). An arbitrary subset would
   need a model-side field; strides cover "high" (s = 1) and "uniform" (s = d_h / d_R).
3. Keys and values into one latent (TransMLA's balanced-KV PCA, §4.3; MHA2MLA's joint SVD, §3.2).
   The nope keys are scaled by alpha = |V| / |K| (1 / alpha goes into the queries), stacked on the
   values, and factored by an SVD weighted by the attention inputs' second moment Sigma: from
   calibration tokens when given, else diag(input_layernorm.weight^2) (weights only: the norm's
   output has unit mean square, assumed isotropic).
4. The latent RMSNorm (`kv_a_layernorm`, which DeepseekV3 always applies) divides each token's
   latent by its RMS, which no linear map reproduces in general. `latent_norm="fit"` picks the
   latent's basis so that its norm is the length of the unit-RMS input u = x / input_layernorm.weight
   projected on the kept subspace (`latent_factors`): constant at rank = hidden_size, where the
   conversion is then exact, and nearly constant below it; kv_b_proj gets the least-squares scale on
   the calibration tokens. This is the form to fine-tune. `latent_norm="bypass"`: the latent is
   scaled down until RMS^2 << eps (1e-6), where the norm is the constant factor 1/sqrt(eps), and
   kv_b_proj scales it back: exact to ~1e-6 at any rank, for serving as is; do not fine-tune it
   (Adam's first steps are far larger than those tiny weights), nor run it in float16 (underflow).

The queries are scaled by sqrt((d_h + d_R) / d_h) since MLA's softmax scale is (nope + rope)^-1/2.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import LlamaForCausalLM

from ...loading import load_model, load_tokenizer, read_config, tokenizer_files
from ...model.attention import KeyValueHeadsDesign, key_value_heads_type
from ...model.attention_mla import MLADesign
from ...model.configuration_hf_attn import TRUNK_FIELDS, HfAttnConfig
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...train.data import CorpusSpec, load_text_splits
from ...utils import AT_LEAST_ONE, HfAttnError, check_options, prepare_output_dir, zero_means
from ..export.to_transformers import design_title
from .latent import carrier_count, norm_carriers

LATENT_NORMS = ("fit", "bypass")
# The counts no source bounds; check_request checks the ranks against the source.
CONVERT_OPTION_RULES = {"calibration_tokens": zero_means("weights only"), "calibration_block_size": AT_LEAST_ONE}
MARKER = "conversion.json"
# Fields the MLA model takes unchanged from the source's config: the trunk (the token ids among them).
COPIED_FIELDS = (*TRUNK_FIELDS, "use_cache")
# "bypass": the latent's mean square stays below this fraction of the norm's eps (relative error ~ half of it).
BYPASS_MARGIN = 1e-6


@dataclass
class ConvertOptions:
    """What `hf-attn-convert` converts, to what shape, and how it calibrates."""

    _argument_group_name = "conversion"

    source: str | None = field(
        default=None, metadata={"help": "an hf_attn MHA/GQA/MQA model folder, or a LlamaForCausalLM folder or Hub id"}
    )
    kv_lora_rank: int | None = field(default=None, metadata={"help": "latent dims per token and layer"})
    qk_rope_head_dim: int | None = field(
        default=None, metadata={"aliases": ["--rope-dim"], "help": "dims of the shared RoPE key (even, <= head_dim)"}
    )
    output_dir: str | None = field(default=None, metadata={"help": "where to write the MLA model folder"})
    rope_stride: int | None = field(
        default=None, metadata={"help": "keep RoPE on source pairs 0, s, 2s, ... (default: chosen by 2-norm)"}
    )
    calibration_tokens: int = field(
        default=4096,
        metadata={"help": "train-split tokens whose activations weight the factorization; 0: weights only"},
    )
    calibration_block_size: int = field(default=256, metadata={"help": "tokens per calibration sequence"})
    latent_norm: Literal[LATENT_NORMS] = field(
        default="fit", metadata={"help": "fit: latent RMSNorm approximated, to fine-tune; bypass: exact, not to train"}
    )
    latent_norm_carriers: int | None = field(
        default=None,
        metadata={"help": "latent dims that only hold the latent norm steady (latent.py); default 4 when calibrated"},
    )
    overwrite: bool = field(default=False, metadata={"help": "replace a previous conversion in --output-dir"})

    def __post_init__(self):
        check_options(self, CONVERT_OPTION_RULES)


# ---------------------------------------------------------------- sources


def load_source(name_or_path: str) -> tuple[HfAttnForCausalLM, object | None]:
    """An hf_attn MHA/GQA/MQA model, or a LlamaForCausalLM turned into one (float32), and its tokenizer if any."""
    # convert_to_mla takes hf_attn MHA/GQA/MQA models and LlamaForCausalLM checkpoints
    model_type = read_config(name_or_path, accept=(HfAttnConfig.model_type, "llama"))["model_type"]
    if model_type == HfAttnConfig.model_type:
        model = load_model(name_or_path, HfAttnForCausalLM)
    else:
        model = from_llama(load_model(name_or_path, LlamaForCausalLM, accept=("llama",)))
    tokenizer = None
    if not os.path.isdir(name_or_path) or tokenizer_files(name_or_path):  # a checkpoint may come without one
        tokenizer = load_tokenizer(name_or_path, vocab_size=model.config.vocab_size)
    return model.eval(), tokenizer


def from_llama(model: LlamaForCausalLM) -> HfAttnForCausalLM:
    """The hf_attn MHA/GQA/MQA model with `model`'s weights (the parameter names are the same)."""
    config = model.config
    rope = dict(config.rope_parameters or {})
    unsupported = {
        "attention_bias": bool(config.attention_bias),
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
        f"rope_type {rope.get('rope_type')!r}": rope.get("rope_type", "default") != "default",
        f"pretraining_tp={getattr(config, 'pretraining_tp', 1)}": getattr(config, "pretraining_tp", 1) != 1,
    }
    found = [name for name, present in unsupported.items() if present]
    if found:
        raise HfAttnError(f"the Llama checkpoint uses {', '.join(found)}, which the MLA conversion does not handle")
    heads, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    fields = {name: getattr(config, name) for name in COPIED_FIELDS}
    target = HfAttnConfig(
        **fields,
        attention_type=key_value_heads_type(kv, heads),
        num_key_value_heads=kv,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        rope_parameters={"rope_type": "default", "rope_theta": rope["rope_theta"]},
    )
    converted = HfAttnForCausalLM(target).to(model.dtype)
    converted.load_state_dict(model.state_dict(), strict=True)
    return converted.eval()


def as_hf_attn(model) -> HfAttnForCausalLM:
    if isinstance(model, LlamaForCausalLM):
        return from_llama(model)
    if not isinstance(model, HfAttnForCausalLM):
        raise HfAttnError(f"convert_to_mla takes an HfAttnForCausalLM or LlamaForCausalLM, not {type(model).__name__}")
    return model


# ---------------------------------------------------------------- the request


@dataclass
class Plan:
    """The shapes of one conversion, checked against the source."""

    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    rank: int
    rope_dim: int
    stride: int | None
    carriers: int = 0  # latent dims kv_b_proj does not read: they steady the latent norm (latent.norm_carriers)

    @property
    def pairs(self) -> int:
        return self.rope_dim // 2

    @property
    def max_rank(self) -> int:
        """Dims the source's nope keys and values span: the RoPE key takes rope_dim of the keys' dims."""
        return min(self.hidden, 2 * self.kv_heads * self.head_dim - self.rope_dim)

    @property
    def max_stride(self) -> int:
        return (self.head_dim // 2 - 1) // (self.pairs - 1) if self.pairs > 1 else 1

    def kept(self, stride: int) -> list[int]:
        """Source frequency pairs that keep RoPE."""
        return [j * stride for j in range(self.pairs)]


def check_request(config: HfAttnConfig, kv_lora_rank, qk_rope_head_dim, rope_stride, latent_norm) -> Plan:
    """The conversion's plan; a request the source cannot satisfy raises ValueError or HfAttnError naming why."""
    # The conversion reads Llama's q/k/v/o projections, MHA/GQA/MQA's weights: keyed on the design's class.
    design = config.design
    if isinstance(design, MLADesign):
        raise ValueError("the source is already an MLA model")
    if not design.has_attention_weights:
        raise HfAttnError(
            f"the source is a {design.name.capitalize()}: {design_title(design)} has no softmax keys and values "
            "for MLA to compress"
        )
    if not isinstance(design, KeyValueHeadsDesign):
        raise HfAttnError(
            f"the source has attention_type={design.name!r}: convert_to_mla reads MHA/GQA/MQA's q/k/v/o projections"
        )
    if config.sliding_window is not None:
        raise HfAttnError(
            f"the source has sliding_window={config.sliding_window}: the MLA model would attend to the whole "
            "context, a different function"
        )
    if config.attention_bias:
        raise HfAttnError("the source has attention biases, which MLA's q_proj and kv_b_proj cannot hold")
    d = config.head_dim
    if not isinstance(qk_rope_head_dim, int) or qk_rope_head_dim < 2 or qk_rope_head_dim % 2:
        raise ValueError(
            f"qk_rope_head_dim (--rope-dim) must be a positive even number, got {qk_rope_head_dim!r}: "
            "RoPE rotates pairs"
        )
    if qk_rope_head_dim > d:
        raise ValueError(f"qk_rope_head_dim (--rope-dim) {qk_rope_head_dim} is larger than the source's head_dim {d}")
    if latent_norm not in LATENT_NORMS:
        raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {latent_norm!r}")
    plan = Plan(
        config.num_attention_heads,
        config.num_key_value_heads,
        d,
        config.hidden_size,
        kv_lora_rank,
        qk_rope_head_dim,
        rope_stride,
    )
    if not isinstance(kv_lora_rank, int) or kv_lora_rank < 1:
        raise ValueError(f"kv_lora_rank must be a positive integer, got {kv_lora_rank!r}")
    if kv_lora_rank > plan.max_rank:
        raise ValueError(
            f"kv_lora_rank {kv_lora_rank} is above what the source can use: its nope keys and values span at most "
            f"{plan.max_rank} dims (min(hidden_size {plan.hidden}, 2 * {plan.kv_heads} kv heads * head_dim {d} "
            f"- rope dim {qk_rope_head_dim}))"
        )
    if rope_stride is not None and not 1 <= rope_stride <= plan.max_stride:
        raise ValueError(
            f"rope_stride {rope_stride}: {plan.pairs} pairs of a head_dim-{d} source fit strides 1..{plan.max_stride}"
        )
    return plan


# ---------------------------------------------------------------- calibration


def attention_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states an attention module's forward received, from a forward hook's `args`/`kwargs`."""
    return args[0] if args else kwargs["hidden_states"]


def run_with_attention_hooks(model: HfAttnForCausalLM, input_ids: torch.Tensor, batch_size: int, hook_for) -> None:
    """Run `model` over `input_ids` (N, T) in chunks of `batch_size` rows, with `hook_for(layer index)` as a
    forward hook (`with_kwargs`) on every layer's attention; the hooks are removed afterwards."""
    layers = model.model.layers
    handles = [layer.self_attn.register_forward_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for chunk in input_ids.split(batch_size):
            model(input_ids=chunk.to(model.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def attention_inputs(model: HfAttnForCausalLM, input_ids: torch.Tensor, batch_size: int = 8) -> list[torch.Tensor]:
    """Each layer's attention input (after input_layernorm) on `input_ids` (N, T): one (N * T, hidden) per layer."""
    if input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(
            f"calibration_data must be a (sequences, tokens) LongTensor, got {input_ids.dtype} "
            f"{tuple(input_ids.shape)}"
        )
    captured = [[] for _ in model.model.layers]

    def hook(index):
        return lambda module, args, kwargs, output: captured[index].append(attention_input(args, kwargs))

    run_with_attention_hooks(model, input_ids, batch_size, hook)
    return [torch.cat(store).reshape(-1, model.config.hidden_size).double().cpu() for store in captured]


def calibration_ids(tokenizer, spec: CorpusSpec, tokens: int, block_size: int) -> torch.Tensor:
    """The first `tokens` tokens of the corpus's train split (EOS between documents), as (N, block_size) rows."""
    ids: list[int] = []
    for text in load_text_splits(spec)["train"]["text"]:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= tokens:
            break
    rows = min(tokens, len(ids)) // block_size
    if rows == 0:
        raise ValueError(f"the corpus has {len(ids)} tokens: not one calibration block of {block_size}")
    return torch.tensor(ids[: rows * block_size]).view(rows, block_size)


def _sqrtm(sigma: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(sigma)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _norm(weight: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """sqrt(E |W x|^2) over the last two dims of `weight` (..., rows, hidden), with x ~ Sigma = root^2."""
    return (weight @ root).pow(2).sum(dim=(-2, -1)).sqrt()


# ---------------------------------------------------------------- step 1 and 2: RoPE


def _pairs(weight: torch.Tensor) -> torch.Tensor:
    """(heads, head_dim, hidden) -> (heads, head_dim / 2, 2, hidden): pair i is dims (i, i + head_dim / 2)."""
    half = weight.shape[1] // 2
    return torch.stack((weight[:, :half], weight[:, half:]), dim=2)


def _unpairs(pairs: torch.Tensor) -> torch.Tensor:
    """The inverse of `_pairs` (the non-interleaved RoPE layout)."""
    return torch.cat((pairs[:, :, 0], pairs[:, :, 1]), dim=1)


def rope_directions(k_pairs: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """Per frequency pair, the unit mix over K/V heads that carries most key energy (RoRoPE): (pairs, kv_heads)."""
    mixed = torch.einsum("gicD,DE->icgE", k_pairs, root)  # (pairs, 2, G, hidden)
    gram = torch.einsum("icgE,ichE->igh", mixed, mixed)  # (pairs, G, G): key covariance across heads
    _, vectors = torch.linalg.eigh(gram)
    top = vectors[..., -1]  # (pairs, G): eigh sorts ascending
    sign = torch.sign(top.gather(1, top.abs().argmax(dim=1, keepdim=True)))
    return top * sign


def rope_contributions(q_pairs, k_pairs, u, root, kv_of, theta: float, context: int) -> torch.Tensor:
    """Per source pair: what dropping its rotation would cost, |q| |k^R| mean_t |2 sin(t theta_i / 2)| (pairs,)."""
    half = k_pairs.shape[1]
    shared = torch.einsum("ig,gicD->icD", u, k_pairs)  # (pairs, 2, hidden)
    q_norms = _norm(q_pairs, root)  # (H, pairs)
    k_norm = _norm(shared, root)  # (pairs,)
    weight = (u[:, kv_of].abs().T * q_norms).sum(dim=0) * k_norm  # (pairs,)
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    turn = (2 * torch.sin(torch.arange(context, dtype=torch.float64)[:, None] * freqs / 2)).abs().mean(dim=0)
    return weight * turn


# ---------------------------------------------------------------- step 3 and 4: the latent


def latent_factors(
    w_kv: torch.Tensor, root: torch.Tensor, rank: int, gain: torch.Tensor, samples: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """W_kv (rows, hidden) ~ up @ down, down (rank, hidden), with a latent whose norm varies little per token.

    The subspace is the top of an SVD of W_kv Sigma^1/2. Its basis is the one where |latent| is the
    length of the input norm's unit-RMS vector u = x / gain projected on the subspace: |u|^2 = hidden
    for every token, so at rank = hidden the latent norm is constant and the RMSNorm exact, and below
    it the norm varies only with the share of u outside the subspace. With calibration samples, a
    per-dim least-squares weighting then flattens |latent|^2 over the samples further.
    """
    u, s, _ = torch.linalg.svd(w_kv @ root, full_matrices=False)
    s = s[:rank].clamp(min=max(s[0].item(), 1e-30) * 1e-8)
    down = (u[:, :rank].T @ w_kv) / s[:, None]  # (rank, hidden): whitened under Sigma
    up = u[:, :rank] * s  # (rows, rank)
    in_u = down * gain  # (rank, hidden): the latent as a map of u
    values, vectors = torch.linalg.eigh(in_u @ in_u.T)
    values = values.clamp(min=values.max() * 1e-12)
    basis = (vectors / values.sqrt()) @ vectors.T  # (rank, rank): (in_u in_u^T)^-1/2
    down, up = basis @ down, up @ ((vectors * values.sqrt()) @ vectors.T)
    if samples is not None:
        squares = (samples @ down.T).pow(2)  # (N, rank)
        target = squares.sum(dim=1, keepdim=True).mean().expand(len(squares), 1)
        weight = torch.linalg.lstsq(squares, target).solution.squeeze(1).clamp(min=0.05).sqrt()  # (rank,)
        down, up = down * weight[:, None], up / weight
    mean_square = (down @ root).pow(2).sum() / rank  # the latent's mean square under Sigma, made 1
    return down / mean_square.sqrt(), up * mean_square.sqrt()


def latent_scales(down, up, samples, latent_norm: str, eps: float) -> tuple[float, float]:
    """(factor on the latent rows of kv_a_proj, factor on kv_b_proj) that make kv_b(norm(kv_a x)) ~ up @ down @ x."""
    rank, hidden = down.shape
    if latent_norm == "bypass":
        # mean(a^2) <= hidden / rank for any x = g * u with |u|^2 <= hidden under the weights-only Sigma
        bound = hidden / rank if samples is None else 10 * (samples @ down.T).pow(2).mean(dim=1).max().item()
        scale = math.sqrt(BYPASS_MARGIN * eps / max(bound, 1e-30))
        return scale, math.sqrt(eps) / scale
    if samples is None:
        return 1.0, math.sqrt(1 + eps)  # the latent's mean square is 1 under Sigma
    latent = samples @ down.T  # (N, rank)
    rms = (latent.pow(2).mean(dim=1) + eps).sqrt()
    weight = (latent @ up.T).pow(2).sum(dim=1)  # least squares of s * y_t / rms_t against y_t
    return 1.0, ((weight / rms).sum() / (weight / rms**2).sum()).item()


# ---------------------------------------------------------------- one layer


@dataclass
class LayerSource:
    """One source layer's attention weights as (heads, head_dim, hidden) float64, and its input statistics."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    root: torch.Tensor  # Sigma^1/2 of the attention input
    gain: torch.Tensor  # input_layernorm.weight: x = gain * u with |u|^2 = hidden
    samples: torch.Tensor | None  # calibration inputs (N, hidden), if any

    @classmethod
    def read(cls, layer, plan: Plan, samples: torch.Tensor | None) -> LayerSource:
        attn = layer.self_attn
        shape = (-1, plan.head_dim, plan.hidden)
        gain = layer.input_layernorm.weight.detach().double().cpu()
        sigma = torch.diag(gain**2) if samples is None else samples.T @ samples / samples.shape[0]
        return cls(
            *(getattr(attn, f"{n}_proj").weight.detach().double().cpu().view(shape) for n in "qkv"),
            attn.o_proj.weight.detach().cpu(),
            _sqrtm(sigma),
            gain,
            samples,
        )


def convert_layer(
    src: LayerSource, plan: Plan, stride: int, u: torch.Tensor, latent_norm: str, eps: float
) -> dict[str, torch.Tensor]:
    """The MLA attention weights of one layer (state-dict names under self_attn)."""
    d, dr, heads, kv_heads = plan.head_dim, plan.rope_dim, plan.heads, plan.kv_heads
    kv_of = torch.arange(heads) // (heads // kv_heads)  # the K/V head each query head reads
    kept = plan.kept(stride)
    k_pairs, q_pairs = _pairs(src.k), _pairs(src.q)  # (G, d/2, 2, D), (H, d/2, 2, D)
    shared = torch.einsum("fg,gfcD->fcD", u[kept], k_pairs[:, kept])  # (pairs kept, 2, D): k^R
    residual = k_pairs.clone()
    residual[:, kept] -= u[kept].T[:, :, None, None] * shared  # what k^R does not carry loses RoPE
    k_nope = _unpairs(residual)  # (G, d, D)
    k_rope = torch.cat((shared[:, 0], shared[:, 1]), dim=0)  # (dr, D): MLA pair j = source pair kept[j]
    q_rope = _unpairs(u[kept][:, kv_of].T[:, :, None, None] * q_pairs[:, kept])  # (H, dr, D)

    energy_k, energy_v = _norm(k_nope, src.root).pow(2).sum(), _norm(src.v, src.root).pow(2).sum()
    alpha = (energy_v / energy_k).sqrt().item() if energy_k > 1e-12 * energy_v else 1.0  # balanced K/V
    scale = math.sqrt((d + dr) / d)  # MLA's softmax scale is (nope + rope)^-1/2, the source's d^-1/2
    q = torch.cat((src.q * (scale / alpha), q_rope * scale), dim=1)  # (H, d + dr, D): [nope | rope]

    w_kv = torch.cat((alpha * k_nope, src.v)).reshape(-1, plan.hidden)  # (2 G d, D): [K nope of each head; V]
    down, up = latent_factors(w_kv, src.root, plan.rank - plan.carriers, src.gain, src.samples)
    down, up = norm_carriers(down, up, src.samples, src.gain, plan.carriers)
    down_scale, up_scale = latent_scales(down, up, src.samples, latent_norm, eps)
    up_k, up_v = (up * up_scale).view(2, kv_heads, d, plan.rank)  # (G, d, r) each
    kv_b = torch.cat((up_k[kv_of], up_v[kv_of]), dim=1)  # (H, d + d, r): [k_nope | v] per head
    dtype = src.o.dtype
    return {
        "q_proj.weight": q.reshape(-1, plan.hidden).to(dtype),
        "kv_a_proj_with_mqa.weight": torch.cat((down * down_scale, k_rope)).to(dtype),
        "kv_a_layernorm.weight": torch.ones(plan.rank, dtype=dtype),
        "kv_b_proj.weight": kv_b.reshape(-1, plan.rank).to(dtype),
        "o_proj.weight": src.o.clone(),
    }


# ---------------------------------------------------------------- the model


def mla_config(config: HfAttnConfig, plan: Plan, stride: int) -> HfAttnConfig:
    """The converted model's config: the source's trunk, MLA dims, and the RoPE base that keeps pairs 0, s, 2s, ..."""
    theta = config.rope_parameters["rope_theta"]
    return HfAttnConfig(
        **{name: getattr(config, name) for name in COPIED_FIELDS},
        attention_type="mla",
        head_dim=plan.head_dim,
        kv_lora_rank=plan.rank,
        qk_rope_head_dim=plan.rope_dim,
        qk_nope_head_dim=plan.head_dim,
        v_head_dim=plan.head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta ** (stride * plan.rope_dim / plan.head_dim)},
    )


def choose_stride(
    sources: list[LayerSource], directions: list[torch.Tensor], plan: Plan, theta: float, context: int
) -> int:
    """The stride whose kept pairs carry the most rotating query-key energy, summed over layers."""
    kv_of = torch.arange(plan.heads) // (plan.heads // plan.kv_heads)
    total = sum(
        rope_contributions(_pairs(src.q), _pairs(src.k), u, src.root, kv_of, theta, context)
        for src, u in zip(sources, directions)
    )
    scores = {s: total[plan.kept(s)].sum().item() for s in range(1, plan.max_stride + 1)}
    return max(scores, key=scores.get)


@torch.no_grad()
def convert_to_mla(
    model,
    kv_lora_rank: int,
    qk_rope_head_dim: int,
    rope_stride: int | None = None,
    calibration_data: torch.Tensor | None = None,
    latent_norm: str = "fit",
    latent_norm_carriers: int | None = None,
) -> HfAttnForCausalLM:
    """An hf_attn MLA model computing (approximately, see the module docstring) what `model` computes.

    `model`: an hf_attn MHA/GQA/MQA `HfAttnForCausalLM` or a `LlamaForCausalLM`. `calibration_data`:
    token ids (N, T) whose activations weight the factorization; None converts from weights alone.
    The cache holds `kv_lora_rank + qk_rope_head_dim` elements per token and layer.
    """
    source = as_hf_attn(model)
    plan = check_request(source.config, kv_lora_rank, qk_rope_head_dim, rope_stride, latent_norm)
    plan.carriers = carrier_count(
        kv_lora_rank, plan.hidden, calibration_data is not None, latent_norm, latent_norm_carriers
    )
    inputs = attention_inputs(source, calibration_data) if calibration_data is not None else None
    layers = source.model.layers
    sources = [LayerSource.read(layer, plan, None if inputs is None else inputs[i]) for i, layer in enumerate(layers)]
    directions = [rope_directions(_pairs(src.k), src.root) for src in sources]
    theta = source.config.rope_parameters["rope_theta"]
    context = calibration_data.shape[1] if calibration_data is not None else source.config.max_position_embeddings
    stride = rope_stride or choose_stride(sources, directions, plan, theta, context)

    target = HfAttnForCausalLM(mla_config(source.config, plan, stride)).to(source.dtype)
    eps = target.model.layers[0].self_attn.kv_a_layernorm.eps
    state = {k: v for k, v in source.state_dict().items() if ".self_attn." not in k}
    for i, (src, u) in enumerate(zip(sources, directions)):
        for name, value in convert_layer(src, plan, stride, u, latent_norm, eps).items():
            state[f"model.layers.{i}.self_attn.{name}"] = value
    target.load_state_dict(state, strict=True)
    return target.eval()


def rope_stride_of(converted: HfAttnConfig, source_theta: float, source_head_dim: int) -> int:
    """The stride a converted config's rope_theta encodes (the inverse of `mla_config`)."""
    ratio = math.log(converted.rope_parameters["rope_theta"]) / math.log(source_theta)
    return round(ratio * source_head_dim / converted.qk_rope_head_dim)


# ---------------------------------------------------------------- measurement


@torch.no_grad()
def attention_errors(source, converted: HfAttnForCausalLM, input_ids: torch.Tensor) -> list[float]:
    """Per layer, |attn_mla(x) - attn_src(x)| / |attn_src(x)| on the source's own attention inputs x."""
    source = as_hf_attn(source)
    records = []

    def record(module, args, kwargs, output):
        records.append((args[0] if args else kwargs["hidden_states"], kwargs.get("attention_mask"), output[0]))

    hooks = [layer.self_attn.register_forward_hook(record, with_kwargs=True) for layer in source.model.layers]
    try:
        source(input_ids=input_ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    errors = []
    for layer, (hidden, mask, expected) in zip(converted.model.layers, records):
        rotary = converted.model.rotary_emb(hidden, positions)
        got = layer.self_attn(hidden, position_embeddings=rotary, attention_mask=mask)[0]
        errors.append(((got - expected).norm() / expected.norm()).item())
    return errors


# ---------------------------------------------------------------- a folder to a folder


def convert_folder(options: ConvertOptions, corpus: CorpusSpec) -> dict:
    """Convert `options.source` and write the MLA model, its tokenizer and conversion.json; returns the record."""
    for name in ("source", "kv_lora_rank", "qk_rope_head_dim", "output_dir"):
        if getattr(options, name) is None:
            raise ValueError(f"--{name.replace('_', '-')} is required")
    if options.calibration_tokens < 0:
        raise ValueError(f"--calibration-tokens must be >= 0, got {options.calibration_tokens}")
    source, tokenizer = load_source(options.source)
    check_request(
        source.config, options.kv_lora_rank, options.qk_rope_head_dim, options.rope_stride, options.latent_norm
    )
    prepare_output_dir(options.output_dir, MARKER, options.overwrite)
    calibration = None
    if options.calibration_tokens:
        if tokenizer is None:
            raise HfAttnError(f"{options.source} has no tokenizer to calibrate with; pass --calibration-tokens 0")
        block = min(options.calibration_block_size, source.config.max_position_embeddings)
        calibration = calibration_ids(tokenizer, corpus, options.calibration_tokens, block)
    model = convert_to_mla(
        source, options.kv_lora_rank, options.qk_rope_head_dim, options.rope_stride, calibration, options.latent_norm,
        options.latent_norm_carriers,
    )  # fmt: skip
    model.save_pretrained(options.output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(options.output_dir)
    check = calibration[:2] if calibration is not None else torch.randint(0, source.config.vocab_size, (2, 64))
    theta = source.config.rope_parameters["rope_theta"]
    record = {
        "source": options.source,
        "source_attention_type": source.config.attention_type,
        "options": {k: v for k, v in vars(options).items() if k not in ("source", "output_dir", "overwrite")},
        "calibration_tokens": 0 if calibration is None else calibration.numel(),
        "rope_stride": rope_stride_of(model.config, theta, source.config.head_dim),
        "rope_theta": model.config.rope_parameters["rope_theta"],
        "source_kv_cache_elements_per_token": source.config.kv_cache_elements_per_token,
        "kv_cache_elements_per_token": model.config.kv_cache_elements_per_token,
        "attention_errors": attention_errors(source, model, check),
    }
    with open(os.path.join(options.output_dir, MARKER), "w") as f:
        json.dump(record, f, indent=2)
    return record
