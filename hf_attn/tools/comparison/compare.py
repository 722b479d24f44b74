"""Train every attention variant on the same budget and compare quality, size, cache and speed.

Each variant trains with `hf_attn.train.loop.train` on the same data, tokenizer, token budget, seed,
depth and width; only the attention block differs. Its attention dims come from each design's
standard setting, derived by `HfAttnConfig` from the shared head dim d_h (see VARIANTS):

    mha        kv heads = heads
    gqa        kv heads = heads / 4 (groups of 4 query heads, as in Llama-2-70B's 64/8 ratio)
    mqa        kv heads = 1
    mla        DeepSeek-V2's ratios: kv_lora_rank d_c = 4 d_h, RoPE key d_R = d_h / 2,
               nope = v = d_h, no query compression
    swa        mha with a sliding window of block / 4 tokens (its cache stops growing there)
    performer  FAVOR+ linear attention with the config's default random-feature count (constant state)
    mla-q      mla plus query compression with q_lora_rank = hidden / 2 (optional variant)

`seeds` trains every variant once per seed: the seed sets the initialisation and the data order
(accelerate's seedable sampler draws each epoch's order from seed + epoch, whatever the model), so
every variant sees the same batches for a seed; the train/validation split is the corpus's
`data_seed` and does not change. `sweep` trains a range of settings per design instead
(`hf_attn.tools.comparison.sweep`). Statistics over seeds and the Pareto frontier: `stats`; report.md
and plots: `report`, `plots`.

Every variant trains in a fresh process (forked from a forkserver): accelerate's state is per process, a crash in
one variant cannot take the others down, and the peak memory (max RSS) is the variant's own.

After training, each saved model is reloaded from its folder and measured:
- the bytes its real cache holds after `generate()` to the block length, next to the formula
  `config.kv_cache_elements(block)` times the element size (and per token, for designs whose cache grows);
- decode tokens/s at a `decode_context`-token context (batch 1, greedy, one token per step; 0 skips it);
- attention parameters counted on the modules, next to `config.attention_parameters_per_layer`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from ...loading import load_model
from ...model.attention_utils import register_attention_design
from ...model.configuration_hf_attn import ATTENTION_DESIGNS, HfAttnConfig
from ...train.options import DEFAULT_PRESET, ModelOptions, TrainArgs, format_overrides, parse_overrides
from ...utils import AT_LEAST_ONE, cache_bytes, check_options, environment, prepare_output_dir, zero_means
from .probes import probe_model
from .report import comparison_table, write_comparison_report
from .stats import frontier_of, summarize
from .sweep import sweep_variants

__all__ = ["comparison_table", "run_comparison", "CompareArgs", "CompareOptions", "VARIANTS"]

# Named variants beyond the registered designs: a design plus config overrides on top of the preset (the
# dims the config does not derive). "hidden/N" and "block/N" are sizes of the run: the preset's hidden
# size, the training block. Every registered design is a variant by its own name (`VARIANTS`).
NAMED_VARIANTS: dict[str, dict] = {
    "swa": {"attention_type": "mha", "sliding_window": "block/4"},
    "mla-q": {"attention_type": "mla", "q_lora_rank": "hidden/2"},
}


class _Variants(Mapping):
    """Variant name -> config overrides: every design in `ATTENTION_DESIGNS` as it registers, and `NAMED_VARIANTS`."""

    def _table(self) -> dict[str, dict]:
        return {**{name: {"attention_type": name} for name in ATTENTION_DESIGNS}, **NAMED_VARIANTS}

    def __getitem__(self, name: str) -> dict:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


VARIANTS: Mapping[str, dict] = _Variants()
DEFAULT_VARIANTS = ("mha", "gqa", "mqa", "mla", "swa", "performer")
MARKER = "compare_args.json"
# The trunk's config fields each result records; every registered design's own fields follow (`recorded_fields`).
TRUNK_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "attention_type",
    "sliding_window",
    "max_position_embeddings",
)


def recorded_fields() -> tuple[str, ...]:
    """The config fields each result records: the trunk and every attention dim (derived ones included)."""
    return tuple(dict.fromkeys([*TRUNK_FIELDS, *(f for d in ATTENTION_DESIGNS.values() for f in d.fields)]))


# Short names of the swept fields, for plot labels: "gqa kv=2", "mla d_c=64", "swa window=8", "performer m=16".
SHORT_NAMES = {
    "num_key_value_heads": "kv",
    "kv_lora_rank": "d_c",
    "q_lora_rank": "d_q",
    "sliding_window": "window",
    "performer_features": "m",
}


# The comparison's budget, in place of the training defaults. Blocks of 512 tokens, where the caches differ
# (the window is block/4 = 128 tokens), at the token budget the 128-token job had: batch 4 x 512 = 2,048
# tokens a step, 200 steps. Evaluating every 50 steps draws the curve from 4 points; the final evaluation,
# the one the tables report, covers 10 batches.
# The recipe is docs/recipe/compare.md's: Muon with warmup-stable-decay took MHA from 1.479 to 1.355
# bits/char at this budget (AdamW with a cosine before).
DEFAULTS = dict(
    output_dir="runs/compare",
    block_size=512,
    batch_size=4,
    optimizer="muon",
    lr=2e-3,
    lr_schedule="wsd",
    decay_fraction=0.3,
    min_lr_ratio=0.0,
    warmup_steps=30,
    max_tokens=409_600,
    eval_every=50,
    eval_batches=10,
    sample_prompt="And God said",
    sample_tokens=48,
    max_chars=2_500_000,
)
# --quick: seconds-long settings for tests (the tiny preset, a few steps, a short decode context).
QUICK = dict(
    preset="tiny",
    max_chars=60_000,
    block_size=32,
    batch_size=4,
    max_tokens=4 * 4 * 32,
    warmup_steps=1,
    eval_every=2,
    eval_batches=2,
    decode_context=64,
    decode_steps=4,
    probe_blocks=4,
    sample_tokens=8,
)


@dataclass
class CompareOptions:
    """What the comparison adds to the training options that every variant shares."""

    _argument_group_name = "comparison"

    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        metadata={
            "help": f"from {sorted(VARIANTS)}; NAME:key=value,... overrides HfAttnConfig fields; with --sweep, "
            "the designs whose ranges are swept"
        },
    )
    seeds: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated seeds, e.g. 0,1,2: every variant trains once per seed (initialisation and "
            "data order), and the report gives means, spreads and paired 95%% intervals against mha "
            "(default: --seed alone)"
        },
    )
    sweep: bool = field(
        default=False,
        metadata={
            "help": "train a range of settings per design instead (kv heads, MLA rank, window, Performer "
            "features; see hf_attn/tools/comparison/sweep.py) and plot the Pareto frontier of bits/char "
            "against cache bytes"
        },
    )
    decode_context: int = field(default=2048, metadata={"help": "context of the decode-speed measurement; 0 skips it"})
    decode_steps: int = field(default=16, metadata={"help": "decode steps timed"})
    probe_blocks: int = field(
        default=32,
        metadata={
            "help": "validation blocks for the loss by position and the copy probe "
            "(hf_attn/tools/comparison/probes.py); 0 skips both"
        },
    )
    mqar_results: str | None = field(
        default=None,
        metadata={"help": "an hf-attn-mqar results.json whose recall accuracy the report's verdicts include"},
    )
    quick: bool = field(default=False, metadata={"help": "seconds-long settings (tiny preset) for tests"})
    merge: list[str] | None = field(
        default=None,
        metadata={
            "help": "instead of training, combine finished comparison folders with the same settings (for "
            "example one seed per machine) into --output-dir: results.json, report and plots over all their runs"
        },
    )

    def __post_init__(self):
        check_options(
            self,
            {
                "decode_context": zero_means("skipped"),
                "decode_steps": AT_LEAST_ONE,
                "probe_blocks": zero_means("skipped"),
            },
        )


@dataclass
class CompareArgs:
    """One comparison run: the training options every variant shares (`train.output_dir` is the
    comparison's folder, `train.model.preset` the trunk, `train.seed` unused: `seeds` replaces it), the
    variants and the seeds. `variants` entries are VARIANTS names, optionally with config overrides:
    "gqa:num_key_value_heads=4"; with `sweep`, names of the designs whose ranges are swept."""

    train: TrainArgs
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    seeds: tuple[int, ...] = (0,)
    sweep: bool = False
    decode_context: int = 2048
    decode_steps: int = 16
    probe_blocks: int = 32
    mqar_results: str | None = None
    command: str = ""

    @property
    def output_dir(self) -> str:
        return self.train.output_dir

    @property
    def preset(self) -> str:
        return self.train.model.preset or DEFAULT_PRESET


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2); each seed a distinct non-negative integer."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--seeds: {text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: {text!r} must list distinct non-negative integers")
    return seeds


def parse_variant(spec: str) -> tuple[str, dict]:
    """'gqa:num_key_value_heads=4' -> ('gqa:num_key_value_heads=4', {...VARIANTS['gqa'], 'num_key_value_heads': 4})."""
    name, _, extra = spec.partition(":")
    if name not in VARIANTS:
        raise ValueError(f"--variants: unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    return spec, {**VARIANTS[name], **parse_overrides(extra, f"variant {spec!r}")}


def variant_label(spec: str) -> str:
    """A short name for plots: 'gqa:num_key_value_heads=2' -> 'gqa kv=2'."""
    name, _, extra = spec.partition(":")
    pairs = [item.partition("=") for item in filter(None, extra.split(","))]
    return " ".join(
        [name, ",".join(f"{SHORT_NAMES.get(k.strip(), k.strip())}={v.strip()}" for k, _, v in pairs)]
    ).strip()


def comparison_specs(args: CompareArgs) -> list[tuple[str, dict]]:
    """The (spec, overrides) pairs the run trains: `variants`, or the sweep over their designs."""
    specs = sweep_variants(args.preset, args.train.block_size, args.variants) if args.sweep else args.variants
    return [parse_variant(v) for v in specs]  # unknown names fail before any training


def resolve_sizes(overrides: dict, hidden_size: int, block_size: int) -> dict:
    """Replace "hidden/N" and "block/N" values by the run's sizes divided by N."""
    sizes = {"hidden": hidden_size, "block": block_size}
    resolved = {}
    for key, value in overrides.items():
        match = re.fullmatch(r"(hidden|block)/(\d+)", value) if isinstance(value, str) else None
        if match:
            value = sizes[match.group(1)] // int(match.group(2))
            if value < 1:
                raise ValueError(
                    f"{key}: {overrides[key]!r} is below 1 for {match.group(1)} size {sizes[match.group(1)]}"
                )
        resolved[key] = value
    return resolved


def variant_model(args: CompareArgs, overrides: dict) -> ModelOptions:
    """The model one variant trains: the preset's trunk with the variant's attention."""
    preset = args.preset
    overrides = resolve_sizes(overrides, HfAttnConfig.from_preset(preset).hidden_size, args.train.block_size)
    # Room for the decode benchmark's context; RoPE has no learned positions, so this changes no weight.
    overrides["max_position_embeddings"] = max(args.train.block_size, args.decode_context + args.decode_steps + 1)
    return ModelOptions(preset=preset, config_overrides=format_overrides(overrides))


def _dir_name(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


# ------------------------------------------------------------------ measurements on a trained model


@torch.inference_mode()
def measure_kv_cache(model, prompt_len: int = 16, new_tokens: int = 8) -> dict:
    """Bytes a real cache holds after `generate()` over prompt_len + new_tokens - 1 tokens (the last
    new token is never fed back), and the config formula's figures: in all and per token."""
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len))
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        pad_token_id=model.config.eos_token_id,
    )
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    tokens = prompt_len + new_tokens - 1
    nbytes = cache_bytes(cache)
    element_size = next(model.parameters()).element_size()
    return {
        "kv_cache_tokens": tokens,
        "kv_cache_bytes": nbytes,
        "kv_cache_formula_bytes": model.config.kv_cache_elements(tokens) * element_size,
        "kv_cache_bytes_per_token": nbytes / tokens,
        "kv_cache_formula_bytes_per_token": model.config.kv_cache_elements_per_token * element_size,
        "kv_cache_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


@torch.inference_mode()
def decode_tokens_per_s(model, context: int, steps: int) -> float:
    """Greedy decode speed (batch 1) after prefilling `context` random tokens into the model's own cache."""
    ids = torch.randint(0, model.config.vocab_size, (1, context))
    out = model(input_ids=ids, use_cache=True)  # the model builds the cache its design needs
    cache = out.cache
    token = out.logits[:, -1:].argmax(-1)
    token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)  # warm-up step
    start = time.perf_counter()
    for _ in range(steps):
        token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return steps / (time.perf_counter() - start)


def attention_parameter_count(model) -> int:
    return sum(p.numel() for layer in model.model.layers for p in layer.self_attn.parameters())


# ------------------------------------------------------------------ one variant (in its own process)


def run_variant(args: CompareArgs, spec: str, overrides: dict, out_dir: str, seed: int) -> dict:
    """Train one variant with one seed and measure it; runs inside a fresh process (see `run_comparison`)."""
    from ...model.modeling_hf_attn import HfAttnForCausalLM
    from ...train.loop import train

    # every core, unless the caller limits threads (OMP_NUM_THREADS=1 to run two comparisons side by side)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    train_args = dataclasses.replace(
        args.train,
        output_dir=os.path.join(out_dir, "model"),
        model=variant_model(args, overrides),
        seed=seed,
        save_every=0,
        tracker="none",
        overwrite=True,
        resume=False,
    )
    result = train(train_args)
    measure_start = time.perf_counter()
    model = load_model(result["model_dir"], HfAttnForCausalLM, dtype="auto")
    block = args.train.block_size
    cache = measure_kv_cache(model, prompt_len=block - 7, new_tokens=8)  # the cache holds `block` tokens
    decode = decode_tokens_per_s(model, args.decode_context, args.decode_steps) if args.decode_context else None
    probes = probe_variant(args, model) if args.probe_blocks else {}
    measure_s = time.perf_counter() - measure_start
    config = {k: getattr(model.config, k, None) for k in recorded_fields()}
    return {
        "variant": spec,
        "seed": seed,
        "label": variant_label(spec),
        "attention_type": model.config.attention_type,
        "attention_dims": model.config.design.describe(model.config),
        "status": "ok",
        "model_dir": result["model_dir"],
        "params": result["params"],
        "attention_params": attention_parameter_count(model),
        "attention_params_formula": model.config.attention_parameters_per_layer * model.config.num_hidden_layers,
        "block_size": block,
        "kv_cache_bounded": model.config.kv_cache_bounded,
        "kv_cache_elements_per_token": model.config.kv_cache_elements_per_token,
        "kv_cache_bytes_at_block": cache["kv_cache_bytes"],
        "kv_cache_formula_bytes_at_block": cache["kv_cache_formula_bytes"],
        **{k: v for k, v in cache.items() if k not in ("kv_cache_tokens", "kv_cache_bytes", "kv_cache_formula_bytes")},
        "decode_context": args.decode_context,
        "decode_tokens_per_s": decode,
        **probes,
        **training_fields(result, measure_s),
        "config": {**config, "seed": seed},
    }


def probe_variant(args: CompareArgs, model) -> dict:
    """Loss by position and the copy probe (`probes`) on the first `probe_blocks` validation blocks, and
    the numbers the verdicts compare: the first and last position buckets, the copies near and far."""
    from ...loading import load_tokenizer
    from ...train.data import build_lm_data

    block = args.train.block_size
    data = build_lm_data(args.train.corpus, load_tokenizer(args.train.tokenizer), block)
    blocks = data.validation["input_ids"][: args.probe_blocks]  # (N, block), the same for every variant
    probes = probe_model(model, blocks, block, batch_size=args.train.batch_size)
    buckets, copies = probes["position_loss"], probes["copy"]
    return {
        "probes": {**probes, "blocks": len(blocks)},
        "short_context_loss": buckets[0]["loss"],
        "far_position_loss": buckets[-1]["loss"],
        "copy_loss_near": copies[0]["second_copy_loss"],
        "copy_loss_far": copies[-1]["second_copy_loss"],
    }


def training_fields(result: dict, measure_s: float) -> dict:
    """What a variant's record keeps of `train()`'s summary: final metrics, speed, the first batch's hash
    (run_info.json: equal for every variant of a seed), where the time went, the curve and the sample."""
    with open(os.path.join(result["model_dir"], "run_info.json")) as f:
        first_batch_hash = json.load(f)["first_batch_hashes"][0]
    training_steps_s = result["history"][-1]["elapsed_s"]  # seconds in training steps only
    return {
        **{k: result[k] for k in ("val_loss", "perplexity", "val_bits_per_char", "val_bits_per_byte")},
        "train_tokens_per_s": result["train_tokens_per_s"],
        "peak_train_memory_bytes": result["peak_memory_bytes"],
        "steps": result["steps"],
        "tokens": result["tokens"],
        "first_batch_hash": first_batch_hash,
        "wall_s": result["wall_s"],
        "timing_s": {
            "training_steps": training_steps_s,
            "train_other": result["wall_s"] - training_steps_s,
            "measure": measure_s,
        },
        "sample": result["sample"],
        "history": [
            {k: r[k] for k in ("step", "tokens", "val_loss", "val_bits_per_char", "train_loss")}
            for r in result["history"]
        ],
    }


def _run_in_fresh_process(args: CompareArgs, spec: str, overrides: dict, out_dir: str, seed: int) -> dict:
    # A forkserver imports the heavy modules once; each variant then forks a clean process from it
    # (no accelerate state, no threads), which starts in a fraction of a second instead of re-importing.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["hf_attn.train.loop", "hf_attn.train.report", "hf_attn.model.modeling_hf_attn", "transformers"]
    )
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        designs = dict(ATTENTION_DESIGNS)  # the designs registered here, built-in or not, travel with the call
        return pool.submit(_run_variant_with, designs, args, spec, overrides, out_dir, seed).result()


def _run_variant_with(designs: dict, *args) -> dict:
    """`run_variant` in the fresh process, after registering the designs of the parent it lacks."""
    for name, design in designs.items():
        if name not in ATTENTION_DESIGNS:
            register_attention_design(design)
    return run_variant(*args)


def failed_record(spec: str, overrides: dict, seed: int, error: BaseException) -> dict:
    """The record of a variant that raised: its error and traceback, its measurements None."""
    return {
        "variant": spec,
        "seed": seed,
        "label": variant_label(spec),
        "attention_type": overrides.get("attention_type"),
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error))[-4000:],
        "model_dir": None,
        **{
            k: None
            for k in (
                "params",
                "attention_params",
                "kv_cache_bytes_per_token",
                "kv_cache_bytes_at_block",
                "val_loss",
                "val_bits_per_char",
                "train_tokens_per_s",
                "decode_tokens_per_s",
            )
        },
    }


# ------------------------------------------------------------------ the whole comparison


def results_of(runs: list[dict], sweep: bool) -> dict:
    """results.json: the run records, the summary over seeds, and with a sweep its Pareto frontier."""
    summary = summarize(runs)
    results = {"runs": runs, "summary": summary}
    if sweep:
        results["frontier"] = frontier_of(summary)
    return results


def run_comparison(args: CompareArgs) -> dict:
    """Train and measure every variant once per seed, then write results.json, report.md and the plots."""
    tokenizer = args.train.tokenizer
    if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        raise FileNotFoundError(f"--tokenizer {tokenizer!r} has no tokenizer.json; pass --tokenizer DIR")
    specs = comparison_specs(args)
    prepare_output_dir(args.output_dir, MARKER, args.train.overwrite)
    with open(os.path.join(args.output_dir, MARKER), "w") as f:
        json.dump(dataclasses.asdict(args), f, indent=2, default=str)
    start = time.perf_counter()
    runs = []
    total = len(specs) * len(args.seeds)
    for seed in args.seeds:  # seed by seed: a stopped run still holds complete comparisons
        for spec, overrides in specs:
            print(f"[{len(runs) + 1}/{total}] training {spec} (seed {seed})", file=sys.stderr, flush=True)
            out_dir = os.path.join(args.output_dir, _dir_name(spec))
            out_dir = os.path.join(out_dir, f"seed-{seed}") if len(args.seeds) > 1 else out_dir
            try:
                record = _run_in_fresh_process(args, spec, overrides, out_dir, seed)
            except Exception as error:  # one failed variant must not cost the others
                print(f"variant {spec} (seed {seed}) failed: {error}", file=sys.stderr, flush=True)
                record = failed_record(spec, overrides, seed, error)
            runs.append(record)
            with open(os.path.join(args.output_dir, "results.json"), "w") as f:  # kept as each run ends
                json.dump(results_of(runs, args.sweep), f, indent=2)
    results = results_of(runs, args.sweep)
    write_comparison_report(
        args.output_dir,
        results,
        dataclasses.asdict(args),
        environment(),
        time.perf_counter() - start,
        results.get("frontier"),
    )
    return results


# Settings that may differ between comparisons that are merged: where and how each one ran.
MERGE_FREE = ("seeds", "command", "output_dir", "seed", "overwrite", "resume", "progress", "mqar_results")


def _settings(args: dict) -> dict:
    """The compare_args.json settings that must agree for runs to be merged (all but MERGE_FREE)."""
    train = {k: v for k, v in args["train"].items() if k not in MERGE_FREE}
    return {**{k: v for k, v in args.items() if k not in MERGE_FREE}, "train": train}


def merge_comparisons(folders: list[str], output_dir: str, overwrite: bool = False) -> dict:
    """Combine finished comparisons run with the same settings but different seeds (say, one seed per
    machine) into `output_dir`: one results.json, report and plots over all their runs."""
    args_list, runs = [], []
    for folder in folders:
        paths = [os.path.join(folder, name) for name in (MARKER, "results.json")]
        for path in paths:
            if not os.path.isfile(path):
                raise ValueError(f"--merge: {path} not found; each folder must be a finished hf-attn-compare run")
        with open(paths[0]) as f:
            args_list.append(json.load(f))
        with open(paths[1]) as f:
            runs += json.load(f)["runs"]
    first = _settings(args_list[0])
    for folder, args in zip(folders[1:], args_list[1:]):
        other = _settings(args)
        for mine, theirs in ((first, other), (first["train"], other["train"])):
            for key in sorted({*mine, *theirs} - {"train"}):
                if mine.get(key) != theirs.get(key):
                    raise ValueError(f"--merge: {folder} differs from {folders[0]} in {key!r}: {theirs.get(key)!r}")
    seen = [(r["variant"], r["seed"]) for r in runs]
    if len(set(seen)) != len(seen):
        twice = next(pair for pair in seen if seen.count(pair) > 1)
        raise ValueError(f"--merge: variant {twice[0]!r} with seed {twice[1]} is in more than one folder")
    order = {spec: i for i, spec in enumerate(args_list[0]["variants"])}
    runs.sort(key=lambda r: (r["seed"], order.get(r["variant"], len(order))))
    prepare_output_dir(output_dir, MARKER, overwrite)
    merged_args = {
        **args_list[0],
        "seeds": sorted({r["seed"] for r in runs}),
        "command": " + ".join(a["command"] for a in args_list) + f" (merged into {output_dir})",
        "train": {**args_list[0]["train"], "output_dir": output_dir},
    }
    with open(os.path.join(output_dir, MARKER), "w") as f:
        json.dump(merged_args, f, indent=2)
    results = results_of(runs, merged_args["sweep"])
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    wall_s = sum(r.get("wall_s") or 0.0 for r in runs)  # the runs' own time, not the folders' wall clocks
    write_comparison_report(output_dir, results, merged_args, environment(), wall_s, results.get("frontier"))
    return results


def load_variant_points(path: str) -> list[dict]:
    """One record per variant from a results.json: its summary over seeds (bits/char the mean), or,
    for a file written before seeds (a list of runs), the runs themselves."""
    with open(path) as f:
        results = json.load(f)
    return results["summary"]["variants"] if isinstance(results, dict) else results
