"""The options of a training run, each declared once with its help text.

`hf-attn-train` builds its command line from these dataclasses (`hf_attn.cli.base.parse`), the
comparison job reuses them for every variant, and `train_args.json` records them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Literal

from ..loading import read_config, read_json_object
from ..model.configuration_hf_attn import ATTENTION_TYPES, PRESETS, HfAttnConfig
from ..utils import ABOVE_ZERO, AT_LEAST_ONE, NOT_NEGATIVE, check_options, zero_means
from .data import CorpusSpec
from .optim import LR_SCHEDULES, OPTIMIZERS

DEFAULT_PRESET = "small"
# Fields --config-overrides may change on a model loaded with --init-from: they change no weight's shape.
INIT_FROM_MUTABLE = ("attention_dropout", "mla_absorb", "use_cache")
# Keys a saved config.json carries that describe the file, not the network.
_CONFIG_FILE_KEYS = ("architectures", "auto_map", "model_type", "transformers_version", "dtype")


@dataclass
class ModelOptions:
    """Which network to build: a preset or a config.json, then HfAttnConfig fields by their own names."""

    _argument_group_name = "model"

    preset: str | None = field(
        default=None,
        metadata={
            "help": f"a named size from HfAttnConfig presets (default: {DEFAULT_PRESET})",
            "choices": sorted(PRESETS),
        },
    )
    config: str | None = field(default=None, metadata={"help": "a config.json to start from instead of the preset"})
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "a saved hf_attn model (folder or Hub id) whose weights, shape and tokenizer the run "
            "starts from: fine-tuning or continued pretraining"
        },
    )
    attention_type: Literal[ATTENTION_TYPES] | None = field(
        default=None, metadata={"help": "the attention design (default: the preset's, mha)"}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "HfAttnConfig fields as key=value pairs joined by commas, for example "
            "'num_key_value_heads=2,kv_lora_rank=64'; values are JSON (numbers, true, null) or text"
        },
    )

    def overrides(self) -> dict:
        """`config_overrides` as a dict, with `attention_type` when it is set; unknown keys are refused."""
        values = parse_overrides(self.config_overrides or "", "--config-overrides")
        if self.attention_type is not None:
            values["attention_type"] = self.attention_type
        return values


@dataclass
class TrainOptions:
    """Everything about a training run except the model and the data (see `TrainArgs`)."""

    _argument_group_name = "training"

    output_dir: str = field(default="runs/hf_attn", metadata={"help": "where the run writes everything"})
    tokenizer: str = field(default="tokenizer", metadata={"help": "tokenizer folder (AutoTokenizer)"})
    train_tokenizer_vocab: int | None = field(
        default=None, metadata={"help": "train a fresh byte-level BPE of this size on the train split instead"}
    )
    block_size: int = field(default=256, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(default=16, metadata={"help": "sequences per micro-batch, per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    optimizer: Literal[OPTIMIZERS] = field(
        default="adamw",
        metadata={
            "help": "adamw: AdamW on every parameter; muon: torch.optim.Muon on the decoder layers' 2-D "
            "matrices (--muon-lr, --muon-weight-decay) and AdamW on embeddings, head, norms and biases "
            "(--lr, --weight-decay); which parameter goes where: hf_attn.train.optim. Not with --fsdp"
        },
    )
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of AdamW (with muon: of its parameters)"})
    lr_schedule: Literal[LR_SCHEDULES] = field(
        default="cosine",
        metadata={
            "help": "cosine: warm-up, then cosine decay to lr * min_lr_ratio; wsd: warm-up, stable, then a "
            "linear decay to lr * min_lr_ratio over the last --decay-fraction of the steps"
        },
    )
    min_lr_ratio: float = field(default=0.1, metadata={"help": "the schedule decays to lr * this"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps; 0: none"})
    decay_fraction: float = field(default=0.2, metadata={"help": "wsd: the fraction of the steps spent decaying"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on matrices"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    muon_lr: float = field(default=0.02, metadata={"help": "muon: peak learning rate of the Muon matrices"})
    muon_weight_decay: float = field(
        default=0.0, metadata={"help": "muon: decoupled weight decay of the Muon matrices"}
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "muon: Muon's (Nesterov) momentum"})
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = field(
        default="original",
        metadata={
            "help": "muon: torch's per-shape rate scaling; original: sqrt(max(1, rows/cols)) (Jordan); "
            "match_rms_adamw: 0.2 * sqrt(max(rows, cols)), so AdamW's rate fits (Moonshot)"
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={"help": "accelerate's setting"})
    fsdp: bool = field(
        default=False,
        metadata={
            "help": "shard parameters, gradients and optimizer state over the processes with torch's FSDP2, "
            "by transformers' plan for the model (one fully_shard per decoder layer); launch with "
            "`torchrun --nproc_per_node N -m hf_attn.cli.train --fsdp ...` (on CPU too: gloo); "
            "checkpoints are sharded, the final model is one ordinary folder (hf_attn.train.sharding)"
        },
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps (default: from --max-tokens, else 1000)"}
    )
    max_tokens: int | None = field(
        default=None, metadata={"help": "stop after this many training tokens (sizes the schedule)"}
    )
    max_time: float | None = field(
        default=None, metadata={"help": "stop after this many seconds from the start (the schedule is unchanged)"}
    )
    eval_every: int = field(default=100, metadata={"help": "evaluate every N steps and at the end; 0: at the end"})
    eval_on_start: bool = field(default=False, metadata={"help": "also evaluate before the first step (step 0)"})
    eval_batches: int | None = field(
        default=None, metadata={"help": "validation batches per evaluation (default: all if <= 100, else 100)"}
    )
    log_every: int = field(
        default=10, metadata={"help": "log the train loss every N steps and at the end; 0: at the end"}
    )
    save_every: int = field(default=500, metadata={"help": "checkpoint every N steps; 0: never"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many checkpoints to keep"})
    tracker: Literal["tensorboard", "none"] = field(default="tensorboard", metadata={"help": "experiment tracker"})
    sample_prompt: str = field(default="The ", metadata={"help": "prompt of the greedy sample in report.md"})
    sample_tokens: int = field(default=64, metadata={"help": "new tokens of that sample; 0: the prompt alone"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation and the data order"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --output-dir"})
    overwrite: bool = field(default=False, metadata={"help": "replace a previous run in --output-dir"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self):
        check_options(self, TRAIN_OPTION_RULES)
        if self.fsdp and self.optimizer == "muon":
            raise ValueError(
                "--optimizer muon with --fsdp: FSDP2 shards every matrix over the processes and Muon "
                "orthogonalizes whole matrices; use --optimizer adamw with --fsdp, or Muon without --fsdp (DDP)"
            )


# What each number may be; 0 is accepted only where the help says what it means.
TRAIN_OPTION_RULES = {
    "train_tokenizer_vocab": AT_LEAST_ONE,
    "block_size": AT_LEAST_ONE,
    "batch_size": AT_LEAST_ONE,
    "grad_accum": AT_LEAST_ONE,
    "lr": ABOVE_ZERO,
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "warmup_steps": zero_means("none"),
    "decay_fraction": (lambda v: 0 < v <= 1, "above 0 and at most 1"),
    "muon_lr": ABOVE_ZERO,
    "muon_weight_decay": NOT_NEGATIVE,
    "muon_momentum": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "weight_decay": NOT_NEGATIVE,
    "beta2": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "max_grad_norm": ABOVE_ZERO,
    "max_steps": AT_LEAST_ONE,
    "max_tokens": AT_LEAST_ONE,
    "max_time": ABOVE_ZERO,
    "eval_every": zero_means("at the end"),
    "eval_batches": AT_LEAST_ONE,
    "log_every": zero_means("at the end"),
    "save_every": zero_means("never"),
    "keep_checkpoints": AT_LEAST_ONE,
    "sample_tokens": zero_means("the prompt alone"),
}


@dataclass
class TrainArgs(TrainOptions):
    """One training run: the training options, the model and the data. `train_args.json` records it."""

    model: ModelOptions = field(default_factory=ModelOptions)
    corpus: CorpusSpec = field(default_factory=CorpusSpec)

    @classmethod
    def from_parts(cls, options: TrainOptions, model: ModelOptions, corpus: CorpusSpec) -> TrainArgs:
        values = {f.name: getattr(options, f.name) for f in dataclasses.fields(TrainOptions)}
        return cls(**values, model=model, corpus=corpus)

    def record(self) -> dict:
        return dataclasses.asdict(self)


def parse_overrides(text: str, where: str) -> dict:
    """'num_key_value_heads=2,kv_lora_rank=64' -> {'num_key_value_heads': 2, 'kv_lora_rank': 64}.

    Keys must be HfAttnConfig fields; `where` names the flag or spec in the error.
    """
    known = {f.name for f in dataclasses.fields(HfAttnConfig)}
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"{where}: {item!r} is not key=value")
        if key not in known:
            raise ValueError(f"{where}: {key!r} is not an HfAttnConfig field")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value.strip()
    return values


def format_overrides(values: dict) -> str:
    """The inverse of `parse_overrides`."""
    return ",".join(f"{key}={json.dumps(value)}" for key, value in values.items())


def build_config(options: ModelOptions, tokenizer, block_size: int) -> HfAttnConfig:
    """The model config of a run: preset or config file, then the overrides, sized to the tokenizer.

    The embedding takes the tokenizer's size unless the config file or an override sets
    `vocab_size` (a preset's vocabulary is only a default). The special-token ids are the
    tokenizer's: the model is trained on what it produces. With `init_from`, the saved model's
    config, where an override may only restate a shape or change `INIT_FROM_MUTABLE` fields.
    """
    overrides = options.overrides()
    if options.init_from is not None:
        config = init_from_config(options, overrides)
    elif options.config is not None:
        if not os.path.isfile(options.config):
            raise FileNotFoundError(f"--config {options.config!r}: no such file")
        base = {k: v for k, v in read_json_object(options.config).items() if k not in _CONFIG_FILE_KEYS}
        try:
            config = HfAttnConfig(**{**base, **overrides, **_special_tokens(tokenizer)})
        except TypeError as e:  # a value of the wrong type; HfAttnConfig's ValueErrors name the field already
            raise ValueError(f"--config {options.config}: {e}") from None
    else:
        overrides.setdefault("vocab_size", len(tokenizer))
        preset = options.preset or DEFAULT_PRESET
        config = HfAttnConfig.from_preset(preset, **overrides, **_special_tokens(tokenizer))
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"vocab_size: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{config.vocab_size}; raise it or leave it unset"
        )
    if block_size > config.max_position_embeddings:
        raise ValueError(
            f"--block-size {block_size} exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings}); lower it or set max_position_embeddings in --config-overrides"
        )
    return config


def init_from_config(options: ModelOptions, overrides: dict) -> HfAttnConfig:
    """The config saved with the `--init-from` model; refuses flags that would change its shape."""
    for flag, value in (("--preset", options.preset), ("--config", options.config)):
        if value is not None:
            raise ValueError(
                f"{flag} {value!r} contradicts --init-from: the model's shape comes from {options.init_from!r}"
            )
    read_config(options.init_from)  # a JSON object with model_type hf_attn and every shape field
    config = HfAttnConfig.from_pretrained(options.init_from)
    for key, value in overrides.items():
        flag = "--attention-type" if key == "attention_type" else f"--config-overrides {key}={value}"
        if key not in INIT_FROM_MUTABLE and getattr(config, key) != value:
            raise ValueError(
                f"{flag} contradicts the --init-from model {options.init_from!r}, "
                f"which has {key}={getattr(config, key)!r}"
            )
        setattr(config, key, value)
    return config


def _special_tokens(tokenizer) -> dict:
    return {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
