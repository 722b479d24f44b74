"""What converting to MLA costs: convert the comparison's MHA and GQA models at several cache sizes,
fine-tune them on a share of the source's training tokens, and train same-shape MLA models from
scratch on those same tokens as the control.

Every number is measured here on the same validation blocks as the comparison (its evaluation
batches), with the comparison's data, tokenizer and training settings (`compare.DEFAULTS`). The
sources are the comparison's own models when `compare_dir` holds them, else trained here with the
comparison's settings, so one command reproduces everything on a fresh clone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from ...loading import load_model, load_tokenizer
from ...model.configuration_hf_attn import HfAttnConfig
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...train.data import CorpusSpec, build_lm_data
from ...train.evaluation import evaluate_loss, lm_metrics
from ...train.loop import train
from ...train.options import ModelOptions, TrainArgs, TrainOptions, format_overrides
from ...utils import environment, markdown_table, prepare_output_dir, read_jsonl
from ..comparison.compare import DEFAULTS, VARIANTS, CompareArgs, load_variant_points, measure_kv_cache, variant_model
from .convert import calibration_ids, check_request, convert_to_mla, rope_stride_of

MARKER = "convert_experiment.json"
QUICK = dict(
    preset="tiny",
    max_chars=60_000,
    block_size=32,
    batch_size=4,
    max_tokens=40 * 4 * 32,
    warmup_steps=2,
    eval_batches=2,
    calibration_tokens=512,
    rope_dim=8,
)


@dataclass
class ExperimentOptions:
    """The experiment's grid; the training settings are the comparison's (see compare.DEFAULTS)."""

    output_dir: str = field(default="runs/convert", metadata={"help": "runs: converted, fine-tuned, control models"})
    docs_dir: str = field(default="docs/convert", metadata={"help": "report.md, results.json and the plot"})
    compare_dir: str = field(default="runs/compare", metadata={"help": "reuse <dir>/<source>/model when present"})
    compare_results: str = field(
        default="docs/compare/results.json", metadata={"help": "the comparison's points for the plot"}
    )
    sources: list[str] = field(default_factory=lambda: ["mha", "gqa"], metadata={"help": "comparison variants"})
    cache_fractions: list[float] = field(
        default_factory=lambda: [0.5, 0.25, 0.125], metadata={"help": "MLA cache as a fraction of the MHA cache"}
    )
    finetune_fractions: list[float] = field(
        default_factory=lambda: [0.05, 0.2], metadata={"help": "fine-tuning tokens, as a share of the source's"}
    )
    rope_dim: int = field(default=16, metadata={"help": "qk_rope_head_dim of every converted model"})
    calibration_tokens: int = field(default=4096, metadata={"help": "calibration tokens (train split); 0: weights"})
    finetune_lr: float = field(
        default=1e-3, metadata={"help": "peak lr of the fine-tuning (the control uses the comparison's lr)"}
    )
    quick: bool = field(default=False, metadata={"help": "seconds-long tiny settings (for tests)"})


@dataclass
class Setting:
    """The comparison's training args and what every measurement shares."""

    compare: CompareArgs
    options: ExperimentOptions
    val_loader: DataLoader
    val_stats: dict
    calibration: torch.Tensor

    @property
    def base(self) -> TrainArgs:
        return self.compare.train


def comparison_setting(options: ExperimentOptions) -> CompareArgs:
    """The comparison's CompareArgs built from its DEFAULTS (and QUICK's for --quick)."""
    values = {
        **DEFAULTS,
        **(QUICK if options.quick else {}),
        "tracker": "none",
        "progress": False,
        "save_every": 0,
        "overwrite": True,
        "sample_tokens": 16,
    }
    train_fields = {f.name for f in dataclasses.fields(TrainOptions)}
    corpus_fields = {f.name for f in dataclasses.fields(CorpusSpec)}
    base = TrainArgs(
        **{k: v for k, v in values.items() if k in train_fields},
        corpus=CorpusSpec(**{k: v for k, v in values.items() if k in corpus_fields}),
        model=ModelOptions(preset=values.get("preset")),
    )
    return CompareArgs(train=base, decode_context=64 if options.quick else 2048)


def make_setting(options: ExperimentOptions) -> Setting:
    compare = comparison_setting(options)
    tokenizer = load_tokenizer(compare.train.tokenizer)
    data = build_lm_data(compare.train.corpus, tokenizer, compare.train.block_size)
    loader = DataLoader(data.validation, batch_size=compare.train.batch_size, shuffle=False)
    tokens = QUICK["calibration_tokens"] if options.quick else options.calibration_tokens
    calibration = calibration_ids(tokenizer, compare.train.corpus, tokens, compare.train.block_size)
    return Setting(compare, options, loader, data.stats["validation"], calibration)


def evaluate_bpc(setting: Setting, model) -> float:
    """Validation bits/char on the comparison's evaluation batches."""
    mean_loss, _ = evaluate_loss(model, setting.val_loader, max_batches=setting.base.eval_batches)
    return lm_metrics(mean_loss, setting.val_stats)["bits_per_char"]


def cache_bytes_per_token(model) -> float:
    return measure_kv_cache(model)["kv_cache_bytes_per_token"]


# ---------------------------------------------------------------- runs


def source_model(setting: Setting, name: str) -> str:
    """The comparison's trained `name` model folder, trained here with its settings if absent.

    A comparison folder counts once its run has finished (report.md is written after the weights).
    """
    given = os.path.join(setting.options.compare_dir, name, "model")
    if not setting.options.quick and os.path.isfile(os.path.join(given, "report.md")):
        return given
    out = os.path.join(setting.options.output_dir, "sources", name)
    args = dataclasses.replace(setting.base, output_dir=out, model=variant_model(setting.compare, VARIANTS[name]))
    if not finished(args):
        print(f"training source {name} -> {out}", file=sys.stderr, flush=True)
        train(args)
    return out


def finished(args: TrainArgs) -> bool:
    """Whether `args.output_dir` holds a finished run of exactly `args` (report.md is its last file)."""
    record = os.path.join(args.output_dir, "train_args.json")
    if not os.path.isfile(os.path.join(args.output_dir, "report.md")) or not os.path.isfile(record):
        return False
    with open(record) as f:
        return json.load(f) == json.loads(json.dumps(args.record()))


def finetune(setting: Setting, out: str, tokens: int, model: ModelOptions, lr: float) -> dict:
    """Train `model` on the first `tokens` tokens of the comparison's data order; returns the final record.

    A finished run of the same arguments in `out` is read back instead (the experiment resumes).
    """
    steps = max(1, tokens // (setting.base.batch_size * setting.base.block_size))
    args = dataclasses.replace(
        setting.base,
        output_dir=out,
        model=model,
        max_tokens=tokens,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        eval_every=10**9,
    )
    if not finished(args):
        train(args)
    final = read_jsonl(os.path.join(out, "metrics.jsonl"))[-1]
    return {
        "bits_per_char": final["val_bits_per_char"],
        "tokens": final["tokens"],
        "steps": final["step"],
        "train_s": final["elapsed_s"],
    }


def mla_shape(config) -> dict:
    return {
        k: getattr(config, k)
        for k in (
            "kv_lora_rank",
            "qk_rope_head_dim",
            "qk_nope_head_dim",
            "v_head_dim",
            "head_dim",
            "max_position_embeddings",
        )
    }


def convert_one(setting: Setting, name: str, source_dir: str, fraction: float, source_tokens: int) -> dict:
    """Convert at one cache size, measure zero-shot (fit and bypass), fine-tune at each fraction."""
    source = load_model(source_dir, HfAttnForCausalLM)
    mha_per_layer = 2 * source.config.num_attention_heads * source.config.head_dim
    rope_dim = QUICK["rope_dim"] if setting.options.quick else setting.options.rope_dim
    rank = round(fraction * mha_per_layer) - rope_dim
    name = f"{name}-{fraction:g}"
    record = {
        "source": source.config.attention_type,
        "cache_fraction": fraction,
        "kv_lora_rank": rank,
        "qk_rope_head_dim": rope_dim,
    }
    try:
        check_request(source.config, rank, rope_dim, None, "fit")
    except ValueError as error:
        return {**record, "status": "skipped", "reason": str(error)}
    start = time.perf_counter()
    exact = convert_to_mla(source, rank, rope_dim, calibration_data=setting.calibration, latent_norm="bypass")
    record["zero_shot_bypass_bits_per_char"] = evaluate_bpc(setting, exact)
    model = convert_to_mla(source, rank, rope_dim, calibration_data=setting.calibration)
    record["convert_s"] = time.perf_counter() - start
    theta = source.config.rope_parameters["rope_theta"]
    record.update(
        status="ok",
        rope_stride=rope_stride_of(model.config, theta, source.config.head_dim),
        kv_cache_bytes_per_token=cache_bytes_per_token(model),
        zero_shot_bits_per_char=evaluate_bpc(setting, model),
    )
    converted_dir = os.path.join(setting.options.output_dir, "converted", name)
    model.save_pretrained(converted_dir)
    load_tokenizer(source_dir).save_pretrained(converted_dir)
    record["shape"] = mla_shape(model.config)
    for share in setting.options.finetune_fractions:
        print(f"fine-tuning {name} on {share:.0%}", file=sys.stderr, flush=True)
        out = os.path.join(setting.options.output_dir, "finetuned", f"{name}-{share:g}")
        run = finetune(
            setting,
            out,
            round(share * source_tokens),
            ModelOptions(init_from=converted_dir),
            setting.options.finetune_lr,
        )
        record[f"finetuned_{share:g}"] = run
    return record


def control(setting: Setting, shape: dict, share: float, source_tokens: int) -> dict:
    """An MLA of `shape` trained from scratch on the fine-tuning tokens, at the comparison's lr."""
    overrides = {"attention_type": "mla", **shape}
    model = ModelOptions(preset=setting.base.model.preset or "small", config_overrides=format_overrides(overrides))
    out = os.path.join(setting.options.output_dir, "control", f"r{shape['kv_lora_rank']}-{share:g}")
    print(f"control r={shape['kv_lora_rank']} on {share:.0%}", file=sys.stderr, flush=True)
    return finetune(setting, out, round(share * source_tokens), model, setting.base.lr)


# ---------------------------------------------------------------- the experiment


def planned_shapes(setting: Setting) -> dict[float, dict]:
    """The MLA shape of each cache fraction (the same for every source: one trunk)."""
    config = variant_model(setting.compare, VARIANTS["mha"])
    trunk = HfAttnConfig.from_preset(config.preset or "small")
    rope_dim = QUICK["rope_dim"] if setting.options.quick else setting.options.rope_dim
    d = trunk.head_dim
    return {
        f: {
            "kv_lora_rank": round(f * 2 * trunk.num_attention_heads * d) - rope_dim,
            "qk_rope_head_dim": rope_dim,
            "qk_nope_head_dim": d,
            "v_head_dim": d,
            "head_dim": d,
            "max_position_embeddings": max(
                setting.base.block_size, setting.compare.decode_context + setting.compare.decode_steps + 1
            ),
        }
        for f in setting.options.cache_fractions
    }


def run_experiment(options: ExperimentOptions) -> dict:
    """Everything: controls, sources, conversions, fine-tunes; writes results.json, report.md and the plot.

    The controls run first: they need no source, and meanwhile a comparison run may finish its models.
    Runs already finished in `output_dir` with the same arguments are reused, so a stopped experiment
    continues where it stopped when started again.
    """
    start = time.perf_counter()
    prepare_output_dir(options.output_dir, MARKER, overwrite=False, keep=True)  # finished runs are reused
    with open(os.path.join(options.output_dir, MARKER), "w") as f:
        json.dump(dataclasses.asdict(options), f, indent=2)
    setting = make_setting(options)
    source_tokens = setting.base.max_tokens
    controls = [
        {
            "shape": shape,
            **{f"{share:g}": control(setting, shape, share, source_tokens) for share in options.finetune_fractions},
        }
        for shape in planned_shapes(setting).values()
    ]
    sources, conversions = [], []
    for name in options.sources:
        source_dir = source_model(setting, name)
        source = load_model(source_dir, HfAttnForCausalLM)
        sources.append(
            {
                "source": name,
                "model_dir": source_dir,
                "bits_per_char": evaluate_bpc(setting, source),
                "kv_cache_bytes_per_token": cache_bytes_per_token(source),
                "tokens": source_tokens,
            }
        )
        for fraction in options.cache_fractions:
            conversions.append(convert_one(setting, name, source_dir, fraction, source_tokens))
            results = {
                "sources": sources,
                "conversions": conversions,
                "controls": controls,
                "options": dataclasses.asdict(options),
                "environment": environment(),
                "wall_s": time.perf_counter() - start,
            }
            write_outputs(options, results)  # after every conversion, so a stopped run still reports
    return results


# ---------------------------------------------------------------- report


def _control_for(results: dict, record: dict) -> dict | None:
    return next((c for c in results["controls"] if c["shape"] == record.get("shape")), None)


def rows(results: dict, shares: list[float]) -> list[list]:
    """One table row per converted model: cache, zero-shot, fine-tuned and control bits/char."""
    table = []
    source_bpc = {s["source"]: s["bits_per_char"] for s in results["sources"]}
    for s in results["sources"]:
        table.append(
            [
                f"{s['source']} (source)",
                s["kv_cache_bytes_per_token"],
                "1",
                s["bits_per_char"],
                None,
                *[None] * (2 * len(shares)),
                "0.0%",
            ]
        )
    for r in results["conversions"]:
        if r["status"] != "ok":
            continue
        ctrl = _control_for(results, r) or {}
        tuned = [r[f"finetuned_{s:g}"]["bits_per_char"] for s in shares]
        best = tuned[-1] if tuned else r["zero_shot_bits_per_char"]
        gap = best / source_bpc[r["source"]] - 1
        table.append(
            [
                f"{r['source']} -> mla r={r['kv_lora_rank']} d_R={r['qk_rope_head_dim']}",
                r["kv_cache_bytes_per_token"],
                f"1/{round(1 / r['cache_fraction'])} of mha",
                r["zero_shot_bits_per_char"],
                r["zero_shot_bypass_bits_per_char"],
                *tuned,
                *[ctrl.get(f"{s:g}", {}).get("bits_per_char") for s in shares],
                f"{gap:+.1%}",
            ]
        )
    return table


def headers(shares: list[float]) -> list[str]:
    return [
        "model",
        "KV cache B/token",
        "cache",
        "bpc zero-shot",
        "bpc zero-shot (bypass)",
        *[f"bpc fine-tuned {s:.0%}" for s in shares],
        *[f"control {s:.0%}" for s in shares],
        f"tuned {shares[-1]:.0%} vs source" if shares else "vs source",
    ]


def targets(results: dict) -> list[str]:
    """The issue's three targets, each with its measured numbers and met/missed."""
    source_bpc = {s["source"]: s["bits_per_char"] for s in results["sources"]}
    found = {(r["source"], r["cache_fraction"]): r for r in results["conversions"] if r["status"] == "ok"}
    lines = []

    def check(label, ok, detail):
        lines.append(f"- {label}: **{'met' if ok else 'missed'}** ({detail})")

    if (r := found.get(("mha", 0.25))) and "finetuned_0.2" in r:
        tuned, src = r["finetuned_0.2"]["bits_per_char"], source_bpc["mha"]
        ctrl = (_control_for(results, r) or {}).get("0.2", {}).get("bits_per_char")
        check(
            "1/4 cache, 20% fine-tune, within 2% of the MHA source and better than the control",
            tuned <= 1.02 * src and ctrl is not None and tuned < ctrl,
            f"{tuned:.4f} vs source {src:.4f}: {tuned / src - 1:+.2%}; control {ctrl:.4f}",
        )
    if (r := found.get(("mha", 0.125))) and "finetuned_0.2" in r:
        tuned, src = r["finetuned_0.2"]["bits_per_char"], source_bpc["mha"]
        check(
            "1/8 cache, 20% fine-tune, within 5%",
            tuned <= 1.05 * src,
            f"{tuned:.4f} vs {src:.4f}: {tuned / src - 1:+.2%}",
        )
    if r := found.get(("mha", 0.5)):
        zero, src = r["zero_shot_bits_per_char"], source_bpc["mha"]
        check(
            "1/2 cache, zero-shot, within 10%", zero <= 1.10 * src, f"{zero:.4f} vs {src:.4f}: {zero / src - 1:+.2%}"
        )
    return lines


def plot(path: str, results: dict, compare_results: list[dict]) -> None:
    """bits/char against KV-cache bytes per token: sources, conversions (zero-shot and tuned), controls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = results["options"]["finetune_fractions"]
    fig, ax = plt.subplots(figsize=(8, 5))
    _plot_compared(ax, compare_results)
    _plot_conversions(ax, results, shares)
    _plot_controls(ax, results, shares)
    ax.set_xscale("log")
    ax.set_xlabel("KV-cache bytes per token (float32, all layers, measured; log scale)")
    ax.set_ylabel("validation bits per character")
    ax.set_title("Converting to MLA: quality against cache size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_compared(ax, compare_results: list[dict]) -> None:
    """The comparison's own models, gray squares."""
    for r in compare_results:
        # the designs whose cache grows per token (this plot's x); bounded ones (window, Performer) have no point
        if r.get("status") == "ok" and not r.get("kv_cache_bounded") and r.get("kv_cache_bytes_per_token"):
            ax.scatter(r["kv_cache_bytes_per_token"], r["val_bits_per_char"], marker="s", color="gray", s=50)
            ax.annotate(
                f"compare {r['variant']}",
                (r["kv_cache_bytes_per_token"], r["val_bits_per_char"]),
                textcoords="offset points",
                xytext=(5, -10),
                fontsize=8,
                color="gray",
            )


def _plot_conversions(ax, results: dict, shares: list[float]) -> None:
    """Each source (a star) and its conversions, zero-shot and after each fine-tuning share."""
    for s, color in zip(results["sources"], ("C0", "C1", "C2")):
        ok = [r for r in results["conversions"] if r["source"] == s["source"] and r["status"] == "ok"]
        ax.scatter(
            s["kv_cache_bytes_per_token"],
            s["bits_per_char"],
            marker="*",
            s=200,
            color=color,
            label=f"{s['source']} source",
            zorder=3,
        )
        x = [r["kv_cache_bytes_per_token"] for r in ok]
        ax.plot(
            x, [r["zero_shot_bits_per_char"] for r in ok], ":o", color=color, label=f"from {s['source']}, zero-shot"
        )
        for share, style in zip(shares, ("--^", "-v")):
            ax.plot(
                x,
                [r[f"finetuned_{share:g}"]["bits_per_char"] for r in ok],
                style,
                color=color,
                label=f"from {s['source']}, tuned {share:.0%}",
            )


def _plot_controls(ax, results: dict, shares: list[float]) -> None:
    """The MLA models trained from scratch on each share, at the conversions' cache sizes."""
    for share, marker in zip(shares, ("x", "+")):
        by_rank = {r["kv_lora_rank"]: r["kv_cache_bytes_per_token"] for r in results["conversions"] if "shape" in r}
        points = sorted(
            (by_rank[c["shape"]["kv_lora_rank"]], c[f"{share:g}"]["bits_per_char"])
            for c in results["controls"]
            if c["shape"]["kv_lora_rank"] in by_rank
        )
        ax.plot(
            [x for x, _ in points],
            [v for _, v in points],
            marker=marker,
            linestyle="-.",
            color="k",
            label=f"MLA from scratch on {share:.0%}",
        )


def write_outputs(options: ExperimentOptions, results: dict) -> None:
    os.makedirs(options.docs_dir, exist_ok=True)
    with open(os.path.join(options.docs_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    compare_results = []
    if os.path.isfile(options.compare_results):  # one point per variant (the mean over seeds)
        compare_results = load_variant_points(options.compare_results)
    plot(os.path.join(options.docs_dir, "bpc_vs_cache.png"), results, compare_results)
    shares = options.finetune_fractions
    table = markdown_table(headers(shares), rows(results, shares), align="lrr" + "r" * (len(headers(shares)) - 3))
    with open(os.path.join(options.docs_dir, "report.md"), "w") as f:
        f.write(report_text(results, table))


def report_text(results: dict, table: str) -> str:
    skipped = [
        f"- {r['source']} at {r['cache_fraction']:g}: {r['reason']}"
        for r in results["conversions"]
        if r["status"] != "ok"
    ]
    env = results["environment"]
    return "\n".join(
        [
            "# Converting MHA/GQA models to MLA",
            "",
            "Produced by `python scripts/convert_experiment.py` "
            f"({results['wall_s'] / 60:.1f} min in its last invocation, "
            "which reuses the runs an earlier one finished; "
            f"torch {env['torch']}, transformers {env['transformers']}, "
            f"{env['cpu_count']} CPUs, commit {env['git_commit']}).",
            "",
            "Sources: the default comparison's MHA and GQA models (`hf-attn-compare` settings). Converted with "
            "`convert_to_mla` (RoRoPE shared key, 2-norm stride, balanced KV PCA in a norm-stable latent basis, "
            "calibrated on "
            f"{results['options']['calibration_tokens']} train tokens). Fine-tuned with `train(init_from=...)` on the "
            "first 5% / 20% of the source's training tokens (same data order, lr "
            f"{results['options']['finetune_lr']}); the control is an MLA of the same shape trained from scratch on "
            "those same tokens at the comparison's lr. bits/char on the comparison's validation batches; cache bytes "
            "measured from a real DynamicCache after generate (float32).",
            "",
            table,
            "",
            "`bypass` is the exact-latent-norm form (the RMSNorm parked in its eps regime): it shows how much of the "
            "zero-shot loss is the latent norm's rather than the rank's or RoPE's.",
            "",
            "## Targets",
            "",
            *targets(results),
            *(["", "## Not run", "", *skipped] if skipped else []),
            "",
            "![bits/char against cache](bpc_vs_cache.png)",
            "",
        ]
    )
