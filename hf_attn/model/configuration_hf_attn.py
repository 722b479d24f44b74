"""Configuration for hf_attn models: one decoder skeleton, pluggable attention designs.

Field names follow transformers' `LlamaConfig` and `DeepseekV3Config`, so a reader who knows those
is at home, and so that checkpoints export to those classes without renaming. What each design adds
(its fields, their defaults, its cache and parameter counts) is its `AttentionDesign`, next to its
attention class; the config reads it through `config.design`.
"""

from transformers import PreTrainedConfig
from transformers.utils import logging

# Importing the attention files registers the built-in designs (single-dot imports, which save_pretrained follows).
from .attention import KeyValueHeadsDesign  # noqa: F401
from .attention_mla import LEGACY_LATENT_NORM_EPS, MLADesign  # noqa: F401
from .attention_performer import PerformerDesign  # noqa: F401
from .attention_utils import ATTENTION_DESIGNS, AttentionDesign

logger = logging.get_logger(__name__)

ATTENTION_TYPES = ("mha", "mqa", "gqa", "mla", "performer")  # the built-in designs; ATTENTION_DESIGNS has all
# Config fields that transformers' cache and mask builders read but no hf_attn model honours: a
# config that sets one is refused instead of caching or masking differently from the model.
# (`layer_types` is derived for Performer, which uses transformers' "linear_attention" cache layers;
# a user-given value is accepted only when it equals the derived one, so a reloaded config passes.)
# The decoder trunk's fields, outside any attention design (LlamaConfig's names): what an export or a
# conversion between designs carries over unchanged.
TRUNK_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "initializer_range",
    "tie_word_embeddings",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
UNSUPPORTED_FIELDS = ("attention_chunk_size", "use_sliding_window", "rope_scaling")

# Named sizes. Each preset fixes the trunk (width, depth, heads); the attention type is chosen
# separately and the attention-specific dims are derived by the rules in `HfAttnConfig.__post_init__`.
PRESETS: dict[str, dict] = {
    # For tests: runs a forward pass in milliseconds on one CPU core.
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
    ),
    # For CPU runs of a few minutes (the comparison job).
    "small": dict(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        max_position_embeddings=512,
    ),
    # GPT-2 small's trunk (12 x 768, 12 heads, 1024 context) with a SwiGLU MLP of matched size.
    "gpt2-124m": dict(
        vocab_size=50304,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
}


class HfAttnConfig(PreTrainedConfig):
    r"""
    Configuration of an hf_attn decoder.

    `attention_type` picks the attention design:

    ```
    mha   every query head has its own K/V head          num_key_value_heads == num_attention_heads
    gqa   groups of query heads share one K/V head        num_attention_heads % num_key_value_heads == 0
    mqa   all query heads share one K/V head              num_key_value_heads == 1
    mla   K/V are up-projected from a cached latent       kv_lora_rank, qk_rope_head_dim, ...
    performer  FAVOR+ linear attention, constant state    performer_features, performer_chunk_size, ...
    ```

    `sliding_window` limits every query of MHA/GQA/MQA to the last `sliding_window` positions, itself
    included, as Mistral does; transformers' sliding-window mask and cache layers then apply. On designs
    without windowed layers (MLA, Performer) it is kept and has no effect (a warning says so), because
    generic code sets the attribute wherever it exists.

    Values left as `None` are derived by the design's rules (its `AttentionDesign.derive`, next to its
    attention class: MLA's follow DeepSeek-V2's ratios to the head dim, the Performer's FAVOR+'s); a
    value the user set is never rewritten: an inconsistent one raises `ValueError` naming the field and
    the rule. A field that belongs to another design is refused.
    """

    model_type = "hf_attn"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    attention_type: str = "mha"
    hidden_act: str = "silu"
    max_position_embeddings: int = 512
    rope_parameters: dict | None = None
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    # Start each residual branch's last projection (attention's o_proj, the MLP's down_proj) at zero, so
    # every layer begins as the identity (modded-nanogpt's speedrun; Fixup, Zhang et al. 2019). It
    # changes the initialisation only, never the architecture or a loaded checkpoint.
    zero_init_output_projections: bool = False
    tie_word_embeddings: bool = False
    use_cache: bool = True
    attention_bias: bool = False
    attention_dropout: float = 0.0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # MLA only (DeepseekV3 names).
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    # eps of the latent norms (kv_a_layernorm, q_a_layernorm); None: `rms_norm_eps`, as DeepseekV3
    mla_latent_norm_eps: float | None = None
    # How MLA decodes: "auto" absorbs the up-projections when a cache is present and the query is
    # short (see HfAttnMLAttention), "always" absorbs whenever a cache is present, "never" expands.
    mla_absorb: str = "auto"
    # MHA/GQA/MQA only: each query sees the last `sliding_window` positions (itself included).
    sliding_window: int | None = None
    # Performer only: random features m, training forward passes between feature redraws (0 = never),
    # and the chunk length of the causal computation.
    performer_features: int | None = None
    performer_redraw_interval: int | None = None
    performer_chunk_size: int | None = None
    # Performer only: seeds every layer's random features and their redraw schedule (default 0).
    performer_seed: int | None = None

    def __post_init__(self, **kwargs):
        layer_types = kwargs.pop("layer_types", None)
        for name in UNSUPPORTED_FIELDS:
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{name}={kwargs[name]!r}: hf_attn models do not implement it, and transformers' caches and "
                    "masks would read it and compute something else than the model (for example a sliding-window "
                    "cache under full attention)."
                )
        self._check_positive("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        self._check_positive("num_attention_heads", "max_position_embeddings")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}) when head_dim is not given."
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._check_positive("head_dim")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}.")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps must be positive, got {self.rms_norm_eps}.")
        if self.mla_absorb not in ("auto", "always", "never"):
            raise ValueError(f"mla_absorb must be 'auto', 'always' or 'never', got {self.mla_absorb!r}.")

        design = self.design
        self._check_foreign_fields(design)
        design.derive(self)
        self._check_sliding_window()
        self._check_layer_types(layer_types)

        if self.rope_parameters is None and "rope_theta" not in kwargs:
            kwargs["rope_theta"] = 10000.0
        super().__post_init__(**kwargs)
        rope_type = self.rope_parameters.get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"rope_parameters['rope_type'] must be 'default' (plain RoPE), got {rope_type!r}.")
        if self.rope_parameters["rope_theta"] <= 0:
            theta = self.rope_parameters["rope_theta"]
            raise ValueError(f"rope_parameters['rope_theta'] must be positive, got {theta}.")

    def _check_positive(self, *names):
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    @property
    def design(self) -> AttentionDesign:
        """The registered description of `attention_type` (hf_attn/model/attention*.py)."""
        if self.attention_type not in ATTENTION_DESIGNS:
            raise ValueError(f"attention_type must be one of {tuple(ATTENTION_DESIGNS)}, got {self.attention_type!r}.")
        return ATTENTION_DESIGNS[self.attention_type]

    def _check_foreign_fields(self, design: AttentionDesign) -> None:
        """A field another design owns, set on this one, is refused (it would be ignored)."""
        for other in ATTENTION_DESIGNS.values():
            for name in other.fields:
                if name not in design.fields and getattr(self, name, None) is not None:
                    owners = [d.name for d in ATTENTION_DESIGNS.values() if name in d.fields]
                    raise ValueError(
                        f"{name} applies only to attention_type {' or '.join(map(repr, owners))}, "
                        f"not {self.attention_type!r}."
                    )

    def _check_sliding_window(self):
        if self.sliding_window is None:
            return
        self._check_positive("sliding_window")
        if self.sliding_window < 2:
            # transformers' sliding-window cache layer keeps the last `sliding_window - 1` keys: 0 would keep all
            raise ValueError(f"sliding_window must be at least 2, got {self.sliding_window}.")
        if not self.design.supports_sliding_window:
            # Kept, not refused: generic code (transformers' own model tests) sets the attribute wherever it
            # exists. It changes nothing: `layer_types` stays full (MLA) or linear (Performer), and those are
            # what transformers' caches and masks read.
            logger.warning_once(
                f"sliding_window={self.sliding_window} has no effect with attention_type={self.attention_type!r}: "
                "its layers have no window."
            )

    @property
    def effective_sliding_window(self) -> int | None:
        """The window the layers apply: `sliding_window` for MHA/GQA/MQA, None for the designs without one."""
        return self.sliding_window if self.design.supports_sliding_window else None

    @property
    def layer_types(self) -> list[str]:
        """Each layer's type in transformers' terms, which its caches and mask builders read.

        Derived on every read, so it always agrees with `attention_type` and `sliding_window`, also after
        either is changed on a built config (a stored list would go stale); not saved in config.json.
        """
        return [self.design.layer_type(self)] * self.num_hidden_layers

    def _check_layer_types(self, given: list[str] | None) -> None:
        """A `layer_types` passed in (a saved config's) must equal the derived one."""
        if given is not None and list(given) != self.layer_types:
            raise ValueError(
                f"layer_types={given!r}: hf_attn derives it from attention_type ({self.layer_types!r} here); "
                "transformers' caches read it, so another value would cache something the model does not compute."
            )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' loader, plus one rule: an MLA config.json saved before `mla_latent_norm_eps` existed
        keeps the latent eps its checkpoint was trained with (1e-6), whatever its `rms_norm_eps`."""
        if config_dict.get("attention_type") == "mla" and "mla_latent_norm_eps" not in config_dict:
            config_dict = {**config_dict, "mla_latent_norm_eps": LEGACY_LATENT_NORM_EPS}
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HfAttnConfig":
        """Build a config from a named size in `PRESETS`; keyword arguments override preset values."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    # Tensor and pipeline parallel plans, read by transformers' `from_pretrained(tp_plan="auto")` and
    # pipeline tooling; they are not saved in config.json. The MLP splits as Llama's (gate/up column-wise,
    # down row-wise); the attention's entries are its design's (`AttentionDesign.tp_plan`).
    _MLP_TP_PLAN = {
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    @property
    def base_model_tp_plan(self) -> dict[str, str]:
        """The design's attention entries (Llama's for MHA/GQA/MQA; none for MLA, as DeepseekV3) and the MLP's."""
        return {**self.design.tp_plan(self), **self._MLP_TP_PLAN}

    @property
    def rope_dim(self) -> int:
        """Number of dimensions per head that RoPE rotates (0: the design takes no positions)."""
        return self.design.rope_dim(self)

    @property
    def kv_cache_elements_per_token(self) -> int:
        """Elements the cache grows by per token, summed over all layers, once it holds a token.

        MHA/GQA/MQA: 2 * kv_heads * head_dim per layer (with `sliding_window`, only until the window
        fills); MLA: kv_lora_rank + qk_rope_head_dim; Performer's state does not grow: 0 (use
        `kv_cache_elements(seq_len)` for what any design holds).
        """
        return (self.design.cache_elements(self, 2) - self.design.cache_elements(self, 1)) * self.num_hidden_layers

    @property
    def kv_cache_bounded(self) -> bool:
        """Whether the cache stops growing with the context (sliding window, Performer)."""
        return self.design.cache_bounded(self)

    def kv_cache_elements(self, seq_len: int) -> int:
        """Elements the cache holds, all layers together, after one sequence of `seq_len` tokens.

        Grows linearly for MHA/GQA/MQA/MLA. A sliding-window cache keeps the last `sliding_window - 1`
        tokens (transformers' `DynamicSlidingWindowLayer`: the next token's own key completes the window).
        Performer keeps, per layer and K/V head, the running sums of phi(k) v^T and phi(k) and a row that
        counts the positions read: (performer_features + 1) * (head_dim + 1) values, whatever `seq_len` is.
        """
        if not isinstance(seq_len, int) or seq_len < 0:
            raise ValueError(f"seq_len must be an integer >= 0, got {seq_len!r}.")
        return self.design.cache_elements(self, seq_len) * self.num_hidden_layers

    @property
    def attention_parameters_per_layer(self) -> int:
        """Parameter count of one layer's attention block, from the design's formulas (biases included)."""
        return self.design.attention_parameters(self)


__all__ = ["HfAttnConfig", "PRESETS", "ATTENTION_TYPES", "ATTENTION_DESIGNS", "TRUNK_FIELDS"]
