"""report.md and plots of the MQAR benchmark: accuracy per cell over seeds, against MHA, beside the cache.

Every number is read from results.json ("runs", "summary" by `mqar_bench.summarize_mqar`).
"""

from __future__ import annotations

import os

from ...utils import markdown_table
from .plots import _pyplot, save_line_plot
from .report import _difference, optimizer_text


def accuracy_table(summary: dict) -> str:
    """Per design: mean accuracy ± sd per cell, the state it keeps, its cache bytes per length."""
    cells = summary["cells"]
    ok = [v for v in summary["variants"] if v["status"] == "ok"]
    lengths = list(ok[0]["kv_cache_bytes"]) if ok else []
    headers = ["design", "attention dims (state)", "cache", *(f"{c} acc" for c in cells)]
    headers += [f"cache bytes at {n}" for n in lengths]
    rows = []
    for v in summary["variants"]:
        if v["status"] != "ok":
            rows.append([v["variant"], "failed in every seed", *["—"] * (len(headers) - 2)])
            continue
        accs = [_mean_sd(v["accuracy"][c], v["accuracy_std"][c]) for c in cells]
        cache = [f"{v['kv_cache_bytes'][n]:,}" for n in lengths]
        bounded = "bounded" if v["kv_cache_bounded"] else "grows"
        rows.append([v["variant"], v["attention_dims"], bounded, *accs, *cache])
    return markdown_table(headers, rows, "lll" + "r" * (len(headers) - 3))


def _mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


def versus_table(summary: dict) -> str:
    """Per design and cell: accuracy minus MHA's, mean [95% interval] over paired seeds, and the verdict."""
    cells = summary["cells"]
    rows = []
    for v in summary["variants"]:
        if v["status"] != "ok" or v["variant"] == summary["reference"]:
            continue
        rows.append([v["variant"], *(_cell_verdict(v["vs_mha"][c]) for c in cells)])
    return markdown_table(["design", *(f"{c}: minus MHA" for c in cells)], rows, "l" + "r" * len(cells))


def _cell_verdict(paired: dict | None) -> str:
    if paired is None:
        return "—"
    return f"{_difference(paired)} {paired['verdict'].replace(' than MHA', '')}"


def plot_accuracy(path: str, summary: dict) -> dict:
    """Accuracy against the number of pairs, one panel per length, a line per design (mean over seeds,
    error bars ± 1 sd). Returns {length: {design: [accuracies]}} read back from the lines."""
    plt = _pyplot()
    cells = summary["cells"]
    lengths = list(dict.fromkeys(int(c.split("x")[1]) for c in cells))
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 4), sharey=True, squeeze=False)
    drawn = {}
    for ax, length in zip(axes[0], lengths):
        names = [c for c in cells if int(c.split("x")[1]) == length]
        pairs = [int(c.split("x")[0]) for c in names]
        drawn[length] = {}
        for v in summary["variants"]:
            if v["status"] != "ok":
                continue
            sd = [v["accuracy_std"][c] or 0.0 for c in names]
            bars = ax.errorbar(pairs, [v["accuracy"][c] for c in names], yerr=sd, marker="o", capsize=3)
            bars.lines[0].set_label(v["variant"])
            drawn[length][v["variant"]] = [float(y) for y in bars.lines[0].get_ydata()]
        ax.set_xscale("log", base=2)
        ax.set_xticks(pairs, [str(p) for p in pairs])
        ax.set_xlabel("key-value pairs")
        ax.set_title(f"sequence length {length}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out recall accuracy")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("MQAR recall: mean over seeds, error bar ± 1 sd", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def plot_learning_curves(path: str, runs: list[dict]) -> dict:
    """Mean accuracy over the grid's cells (a small held-out set) against the training step, a line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors, drawn = {}, {}
    for r in runs:
        if r["status"] != "ok":
            continue
        steps = [p["step"] for p in r["curve"]]
        (line,) = ax.plot(steps, [p["mean_accuracy"] for p in r["curve"]], color=colors.get(r["variant"]), lw=1)
        if r["variant"] not in colors:
            colors[r["variant"]] = line.get_color()
            line.set_label(r["variant"])
        drawn[(r["variant"], r["seed"])] = [float(y) for y in line.get_ydata()]
    title = "MQAR learning curves (one line per seed; a quarter of the held-out examples per point)"
    save_line_plot(fig, ax, path, "training step", "recall accuracy, mean over the cells", title)
    return drawn


def mqar_header(args: dict, env: dict, wall_s: float) -> list[str]:
    """Title, command, machine, and the task, trunk and schedule every design shares."""
    t = args
    return [
        "# MQAR: multi-query associative recall, every design trained from scratch",
        "",
        f"Command: `{args['command'] or 'hf-attn-mqar'}`  ",
        f"Wall time: {wall_s:,.0f} s ({args['workers']} worker processes, one thread each). "
        f"Machine: {env['machine']}, {env['cpu_count']} CPUs"
        + (f", GPU {env['cuda']}" if env["cuda"] else ", no GPU")
        + ".",
        "",
        f"Task (Zoology, Arora et al. 2023): {', '.join(map(str, args['pairs']))} key-value pairs at sequence lengths "
        f"{', '.join(map(str, args['lengths']))}; keys drawn without replacement from {args['key_vocab']} tokens, "
        f"values from {args['value_vocab']}; each key queried once at a random place after the pairs; loss and "
        f"accuracy on the answers only. Trunk: {args['num_hidden_layers']} layers, hidden {args['hidden_size']}, "
        f"{args['num_attention_heads']} heads, MLP {args['intermediate_size']}; swa's window {args['window']} tokens. "
        f"Schedule: {t['steps']:,} steps of {t['batch_tokens']:,} tokens (batch_tokens // length examples), "
        f"one cell a step (the first {t['short_steps']:,} "
        f"cycling through the shortest length's cells, then through all), {optimizer_text(t)} "
        f"(warm-up {t['warmup_steps']}, cosine), weight decay {t['weight_decay']}, gradient norm clipped at "
        f"{t['max_grad_norm']}; scored on {t['eval_examples']} "
        f"held-out examples per cell. Seeds {', '.join(map(str, args['seeds']))} (initialisation and data).",
        "",
    ]


def write_mqar_report(output_dir: str, results: dict, args: dict, env: dict, wall_s: float) -> None:
    """report.md, accuracy.png and learning_curves.png in `output_dir`."""
    summary, runs = results["summary"], results["runs"]
    plot_accuracy(os.path.join(output_dir, "accuracy.png"), summary)
    plot_learning_curves(os.path.join(output_dir, "learning_curves.png"), runs)
    parts = mqar_header(args, env, wall_s) + [
        "## Accuracy (mean ± sd over seeds) and cache",
        "",
        accuracy_table(summary),
        "",
        "Cache bytes: the config's formula (`kv_cache_elements(length)` × 4 bytes, float32), all layers, one "
        "sequence; 'bounded' caches (the window, the Performer's state) stop growing.",
        "",
        "## Against MHA",
        "",
        "Accuracy minus MHA's, mean [95% t-interval] of the paired per-seed differences; 'better'/'worse' when "
        "the interval excludes 0, else within the seed spread.",
        "",
        versus_table(summary),
        "",
        "![accuracy.png](accuracy.png)",
        "",
        "![learning_curves.png](learning_curves.png)",
        "",
    ]
    for r in runs:
        if r["status"] != "ok":
            parts += [f"**{r['variant']} failed** (seed {r['seed']}): `{r['error']}`", ""]
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(parts))
