"""Configuration for hf_attn models: one decoder skeleton, four attention designs.

Field names follow transformers' `LlamaConfig` and `DeepseekV3Config`, so a reader who knows those
is at home, and so that checkpoints export to those classes without renaming.
"""

from transformers import PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

ATTENTION_TYPES = ("mha", "mqa", "gqa", "mla", "performer")
GQA_FAMILY = ("mha", "mqa", "gqa")
# Config fields that transformers' cache and mask builders read but no hf_attn model honours: a
# config that sets one is refused instead of caching or masking differently from the model.
# (`layer_types` is derived for Performer, which uses transformers' "linear_attention" cache layers;
# a user-given value is accepted only when it equals the derived one, so a reloaded config passes.)
UNSUPPORTED_FIELDS = ("attention_chunk_size", "use_sliding_window", "rope_scaling")
PERFORMER_FIELDS = ("performer_features", "performer_redraw_interval", "performer_chunk_size", "performer_seed")
# Performer defaults (see `_derive_performer`).
PERFORMER_REDRAW_INTERVAL = 1000
PERFORMER_CHUNK_SIZE = 64

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

    `sliding_window` (MHA/GQA/MQA only) limits every query to the last `sliding_window` positions,
    itself included, as Mistral does; transformers' sliding-window mask and cache layers then apply.

    Values left as `None` are derived (documented next to each rule below); a value the user set is
    never rewritten: an inconsistent one raises `ValueError` naming the field and the rule.

    MLA (DeepSeek-V2 §2.1) defaults follow the paper's ratios to the head dim d_h:
    `kv_lora_rank = 4 d_h`, `qk_rope_head_dim = d_h / 2`, `qk_nope_head_dim = v_head_dim = d_h`,
    and no query compression (`q_lora_rank=None`).

    Performer (Choromanski et al. 2021, FAVOR+) defaults: `performer_features` m = 4 d_h rounded
    (the paper's m = d_h log d_h is 111 for d_h = 32; 128 = 4 d_h costs the same), redraw every
    1000 training forward passes, causal chunks of 64 positions; `num_key_value_heads` defaults to
    the head count and may divide it (the state is kept per K/V head).
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
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}.")
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

        self._check_sliding_window()
        if self.attention_type == "mla":
            self._derive_mla()
        elif self.attention_type == "performer":
            self._derive_performer()
        else:
            self._derive_gqa_family()
        if self.attention_type != "performer":
            for name in PERFORMER_FIELDS:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} applies only to attention_type='performer', not {self.attention_type!r}."
                    )
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

    def _derive_gqa_family(self):
        heads = self.num_attention_heads
        self._check_no_mla_fields()
        if self.num_key_value_heads is None:
            if self.attention_type == "mha":
                self.num_key_value_heads = heads
            elif self.attention_type == "mqa":
                self.num_key_value_heads = 1
            else:  # gqa: groups of 4 query heads where possible, else groups of 2
                group = next((g for g in (4, 2) if heads % g == 0 and heads // g > 1), None)
                if group is None:
                    raise ValueError(
                        f"num_key_value_heads must be set for attention_type='gqa' with {heads} heads: "
                        "no group size of 4 or 2 leaves more than one key/value head."
                    )
                self.num_key_value_heads = heads // group
        kv = self.num_key_value_heads
        self._check_positive("num_key_value_heads")
        if self.attention_type == "mha" and kv != heads:
            raise ValueError(f"num_key_value_heads ({kv}) must equal num_attention_heads ({heads}) for 'mha'.")
        if self.attention_type == "mqa" and kv != 1:
            raise ValueError(f"num_key_value_heads ({kv}) must be 1 for 'mqa'.")
        if heads % kv:
            raise ValueError(f"num_key_value_heads ({kv}) must divide num_attention_heads ({heads}) for 'gqa'.")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even: RoPE rotates pairs of dimensions.")

    def _check_sliding_window(self):
        if self.sliding_window is None:
            return
        self._check_positive("sliding_window")
        if self.sliding_window < 2:
            # transformers' sliding-window cache layer keeps the last `sliding_window - 1` keys: 0 would keep all
            raise ValueError(f"sliding_window must be at least 2, got {self.sliding_window}.")
        if self.attention_type not in GQA_FAMILY:
            # Kept, not refused: generic code (transformers' own model tests) sets the attribute wherever it
            # exists. It changes nothing: `layer_types` stays full (MLA) or linear (Performer), and those are
            # what transformers' caches and masks read.
            logger.warning_once(
                f"sliding_window={self.sliding_window} has no effect with attention_type={self.attention_type!r}: "
                f"only {GQA_FAMILY} have windowed layers."
            )

    @property
    def effective_sliding_window(self) -> int | None:
        """The window the layers apply: `sliding_window` for MHA/GQA/MQA, None for the designs without one."""
        return self.sliding_window if self.attention_type in GQA_FAMILY else None

    @property
    def layer_types(self) -> list[str]:
        """Each layer's type in transformers' terms, which its caches and mask builders read.

        Derived on every read, so it always agrees with `attention_type` and `sliding_window`, also after
        either is changed on a built config (a stored list would go stale); not saved in config.json.
        """
        if self.attention_type == "performer":
            layer_type = "linear_attention"  # a constant-size state (transformers' linear-attention cache layers)
        elif self.effective_sliding_window is not None:
            layer_type = "sliding_attention"
        else:
            layer_type = "full_attention"
        return [layer_type] * self.num_hidden_layers

    def _check_layer_types(self, given: list[str] | None) -> None:
        """A `layer_types` passed in (a saved config's) must equal the derived one."""
        if given is not None and list(given) != self.layer_types:
            raise ValueError(
                f"layer_types={given!r}: hf_attn derives it from attention_type ({self.layer_types!r} here); "
                "transformers' caches read it, so another value would cache something the model does not compute."
            )

    def _derive_performer(self):
        heads = self.num_attention_heads
        self._check_no_mla_fields()
        if self.num_key_value_heads is None:
            self.num_key_value_heads = heads
        self._check_positive("num_key_value_heads")
        if heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide num_attention_heads ({heads})."
            )
        for name, default in (
            ("performer_features", 4 * self.head_dim),
            ("performer_redraw_interval", PERFORMER_REDRAW_INTERVAL),
            ("performer_chunk_size", PERFORMER_CHUNK_SIZE),
            ("performer_seed", 0),
        ):
            if getattr(self, name) is None:
                setattr(self, name, default)
        self._check_positive("performer_features", "performer_chunk_size")
        seed = self.performer_seed
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**20:
            raise ValueError(f"performer_seed must be an integer in [0, 2**20), got {seed!r}.")
        interval = self.performer_redraw_interval
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 0:
            raise ValueError(f"performer_redraw_interval must be an integer >= 0 (0 = never), got {interval!r}.")
        if self.attention_dropout:
            raise ValueError(
                f"attention_dropout={self.attention_dropout} with attention_type='performer': "
                "FAVOR+ forms no attention weights to drop."
            )

    def _check_no_mla_fields(self):
        for name in ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} applies only to attention_type='mla', not {self.attention_type!r}.")

    def _derive_mla(self):
        d_h = self.head_dim
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.num_key_value_heads != self.num_attention_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must equal num_attention_heads "
                f"({self.num_attention_heads}) for 'mla': every head gets its own up-projected K/V."
            )
        for name, default in (
            ("kv_lora_rank", 4 * d_h),
            ("qk_rope_head_dim", max(2, d_h // 2 - (d_h // 2) % 2)),
            ("qk_nope_head_dim", d_h),
            ("v_head_dim", d_h),
        ):
            if getattr(self, name) is None:
                setattr(self, name, default)
        self._check_positive("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
        if self.q_lora_rank is not None:
            self._check_positive("q_lora_rank")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even: RoPE rotates pairs.")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HfAttnConfig":
        """Build a config from a named size in `PRESETS`; keyword arguments override preset values."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    # Tensor and pipeline parallel plans, read by transformers' `from_pretrained(tp_plan="auto")` and
    # pipeline tooling; they are not saved in config.json. The projections that split are Llama's:
    # heads are sharded column-wise (q/k/v, gate/up) and gathered row-wise (o, down). MLA follows
    # DeepseekV3's plan, which shards only the MLP: its attention stays replicated, since the latent
    # and the shared RoPE key feed every head and the absorbed decode folds kv_b_proj across heads.
    _GQA_TP_PLAN = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
    }
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
        """Llama's plan for MHA/GQA/MQA; DeepseekV3's (MLP only) for MLA, and for Performer."""
        attention = self._GQA_TP_PLAN if self.attention_type in GQA_FAMILY else {}
        return {**attention, **self._MLP_TP_PLAN}

    @property
    def rope_dim(self) -> int:
        """Number of dimensions per head that RoPE rotates (0: the design takes no positions)."""
        if self.attention_type == "performer":
            return 0
        return self.qk_rope_head_dim if self.attention_type == "mla" else self.head_dim

    @property
    def kv_cache_elements_per_token(self) -> int:
        """Elements the KV cache grows by per token, summed over all layers.

        MHA/GQA/MQA cache one key and one value per K/V head: 2 * kv_heads * head_dim per layer
        (with `sliding_window`, only until the window fills). MLA caches the compressed latent and
        the shared RoPE key: kv_lora_rank + qk_rope_head_dim. Performer's state does not grow: 0
        (use `kv_cache_elements(seq_len)` for what any design holds).
        """
        if self.attention_type == "performer":
            return 0
        if self.attention_type == "mla":
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.num_key_value_heads * self.head_dim
        return per_layer * self.num_hidden_layers

    @property
    def kv_cache_bounded(self) -> bool:
        """Whether the cache stops growing with the context (sliding window, Performer)."""
        return self.attention_type == "performer" or self.effective_sliding_window is not None

    def kv_cache_elements(self, seq_len: int) -> int:
        """Elements the cache holds, all layers together, after one sequence of `seq_len` tokens.

        Grows linearly for MHA/GQA/MQA/MLA. A sliding-window cache keeps the last
        `sliding_window - 1` tokens (transformers' `DynamicSlidingWindowLayer`: the next token's own
        key completes the window). Performer keeps, per layer and K/V head, the running sums of
        phi(k) v^T and phi(k), plus one row that counts the positions read (generate() continues from it):
        (performer_features + 1) * (head_dim + 1) values, whatever `seq_len` is.
        """
        if not isinstance(seq_len, int) or seq_len < 0:
            raise ValueError(f"seq_len must be an integer >= 0, got {seq_len!r}.")
        if self.attention_type == "performer":
            per_layer = self.num_key_value_heads * (self.performer_features + 1) * (self.head_dim + 1)
            return per_layer * self.num_hidden_layers if seq_len else 0
        window = self.effective_sliding_window
        tokens = seq_len if window is None else min(seq_len, window - 1)
        return self.kv_cache_elements_per_token * tokens

    @property
    def attention_parameters_per_layer(self) -> int:
        """Parameter count of one layer's attention block, from the formulas (biases included)."""
        d, h, b = self.hidden_size, self.num_attention_heads, int(self.attention_bias)
        if self.attention_type != "mla":  # MHA/GQA/MQA and Performer: Llama's four projections
            q = h * self.head_dim
            kv = self.num_key_value_heads * self.head_dim
            return (d + b) * (q + 2 * kv) + (q + b) * d
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank is None:
            q = d * h * qk
        else:
            q = (d + b) * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * h * qk
        kv_a = (d + b) * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
        kv_b = self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
        o = (h * self.v_head_dim + b) * d
        return q + kv_a + kv_b + o


__all__ = ["HfAttnConfig", "PRESETS", "ATTENTION_TYPES", "GQA_FAMILY"]
