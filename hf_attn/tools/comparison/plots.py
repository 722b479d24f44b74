"""The comparison's plots. Each function returns the data it drew, read back from the plot's artists,
so that a test can check what is on the figure and not only that a PNG exists."""

from __future__ import annotations

import os

# The palette of the design families in the cache plots, in the order the families first appear (the sweep
# joins a family's points by a line); matplotlib's default cycle.
PALETTE = tuple(f"C{i}" for i in range(10))


def family_colors(families) -> dict[str, str]:
    """A colour per family, from `PALETTE` in order of first appearance (repeating past ten families)."""
    return {family: PALETTE[i % len(PALETTE)] for i, family in enumerate(dict.fromkeys(families))}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_over_seeds(runs: list[dict]) -> dict[str, dict]:
    """Per variant, the validation bits/char at each evaluation: mean, min and max over its seeds
    (the evaluation points every finished seed has)."""
    curves = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        ok = [r for r in runs if r["variant"] == variant and r["status"] == "ok"]
        if not ok:
            continue
        by_tokens = [{h["tokens"]: h["val_bits_per_char"] for h in r["history"]} for r in ok]
        tokens = sorted(set.intersection(*(set(b) for b in by_tokens)))
        values = [[b[t] for b in by_tokens] for t in tokens]
        curves[variant] = {
            "tokens": tokens,
            "mean": [sum(v) / len(v) for v in values],
            "low": [min(v) for v in values],
            "high": [max(v) for v in values],
            "n_seeds": len(ok),
        }
    return curves


def plot_curves(path: str, runs: list[dict]) -> dict[str, dict]:
    """Validation bits/char against training tokens: the mean over seeds, with a band from the lowest
    to the highest seed where there are several. Returns per variant the line and band drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = {}
    for variant, curve in curves_over_seeds(runs).items():
        (line,) = ax.plot(curve["tokens"], curve["mean"], marker="o", markersize=3, label=variant)
        drawn[variant] = {"tokens": list(line.get_xdata()), "mean": list(line.get_ydata()), "band": None}
        if curve["n_seeds"] > 1:
            band = ax.fill_between(curve["tokens"], curve["low"], curve["high"], color=line.get_color(), alpha=0.2)
            vertices = band.get_paths()[0].vertices
            drawn[variant]["band"] = {"low": min(vertices[:, 1]), "high": max(vertices[:, 1])}
    seeds = max((c["n_seeds"] for c in curves_over_seeds(runs).values()), default=1)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation bits per character")
    title = "Validation bits/char during training (same data, budget and trunk)"
    ax.set_title(title + (f"\nline: mean of {seeds} seeds; band: lowest to highest seed" if seeds > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def plot_quality_vs_cache(
    path: str, variants: list[dict], block_size: int, frontier: list[str] | None = None, family_of=None
) -> dict:
    """Mean final bits/char (error bar: one standard deviation over seeds) against the KV-cache bytes
    one sequence holds at the block length; the top axis gives the per-token rate of the designs
    whose cache grows with the context. With `frontier` (variant names, by increasing bytes), the
    Pareto frontier is drawn as a step line and its points are named in bold; `family_of` maps a
    variant to a colour family. Returns {variant: (x, y, yerr)} read from the plot, and the frontier."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5) if frontier is not None else (7, 4.5))
    ok = [v for v in variants if v["status"] == "ok"]
    drawn = {}
    colors = family_colors(family_of(v["variant"]) for v in ok) if family_of else {}
    for v in ok:
        color = colors[family_of(v["variant"])] if family_of else None
        err = ax.errorbar(
            v["kv_cache_bytes_at_block"],
            v["val_bits_per_char"],
            yerr=v["val_bits_per_char_std"],
            fmt="D" if v["kv_cache_bounded"] else "o",
            mfc="white" if v["kv_cache_bounded"] else color,
            color=color,
            markersize=7,
            capsize=3,
        )
        (x,), (y,) = err.lines[0].get_data()
        yerr = None
        if err.lines[2]:  # the error bar's segment: (x, y - sd) to (x, y + sd)
            (low, high) = err.lines[2][0].get_segments()[0][:, 1]
            yerr = (high - low) / 2
        drawn[v["variant"]] = (float(x), float(y), yerr)
        _annotate(ax, v, x, y, frontier)
    if family_of is not None:
        _draw_families(ax, ok, family_of, colors)
    front_drawn = _draw_frontier(ax, ok, frontier) if frontier is not None else None
    _cache_axes(ax, ok, block_size, frontier)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"points": drawn, "frontier": front_drawn}


def _annotate(ax, v: dict, x: float, y: float, frontier: list[str] | None) -> None:
    """Name a point: in full and bold on the frontier (or without one), else its swept value in gray."""
    if frontier is None or v["variant"] in frontier:
        bold = frontier is not None
        text, style = v.get("label", v["variant"]), dict(fontsize=9, fontweight="bold" if bold else "normal")
    else:
        label = v.get("label", v["variant"])
        text, style = label.split(" ", 1)[-1], dict(fontsize=7, color="dimgray")
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 4), **style)


def _draw_families(ax, ok: list[dict], family_of, colors: dict[str, str]) -> None:
    """A thin line through each design family's points, by increasing cache, named in the legend."""
    for family in colors:
        points = sorted(
            (v["kv_cache_bytes_at_block"], v["val_bits_per_char"]) for v in ok if family_of(v["variant"]) == family
        )
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            color=colors[family],
            linewidth=0.8,
            alpha=0.6,
            label=family,
        )


def _draw_frontier(ax, ok: list[dict], frontier: list[str]) -> list[tuple[float, float]]:
    """The frontier as a step line: from each frontier point to the right until the next one."""
    by_name = {v["variant"]: v for v in ok}
    xs = [by_name[name]["kv_cache_bytes_at_block"] for name in frontier]
    ys = [by_name[name]["val_bits_per_char"] for name in frontier]
    if not xs:
        return []
    right = ax.get_xlim()[1] if len(xs) == 1 else xs[-1] * 1.5
    (line,) = ax.step(
        [*xs, right], [*ys, ys[-1]], where="post", color="black", linestyle="--", linewidth=1, label="Pareto frontier"
    )
    ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="black", linewidths=1.2)
    ax.legend(loc="best", fontsize=8)
    return [(float(x), float(y)) for x, y in line.get_xydata()[:-1]]


def _cache_axes(ax, ok: list[dict], block_size: int, frontier: list[str] | None) -> None:
    """Log x axis of bytes per sequence at the block length, a top axis in bytes per token, labels."""
    dtype = ok[0].get("kv_cache_dtype", "") if ok else ""
    seeds = max((v["n_seeds"] for v in ok), default=1)
    ax.set_xscale("log")
    xlabel = f"KV-cache bytes held by one sequence of {block_size} tokens ({dtype}, all layers, log scale)"
    if any(v["kv_cache_bounded"] for v in ok):
        xlabel += "\nhollow diamonds: bounded cache (sliding window, Performer), no larger at longer contexts"
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(
        "final validation bits per character" + (f"\n(mean, error bar ± 1 sd of {seeds} seeds)" if seeds > 1 else "")
    )
    top = ax.secondary_xaxis("top", functions=(lambda b: b / block_size, lambda t: t * block_size))
    top.set_xlabel("bytes per token (designs whose cache grows with the context)", fontsize=8)
    title = "Quality against KV-cache size (lower left is better)"
    if frontier is not None:
        title = (
            "Pareto frontier of quality against KV-cache size (lower left is better)\n"
            "for a cache budget, the frontier's last point left of it is the best design that fits"
        )
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")


def save_plots(output_dir: str, runs: list[dict], summary: dict, block_size: int) -> list[str]:
    """bpc_vs_tokens.png, quality_vs_kv_cache.png and, with the probes, loss_by_position.png; the file names."""
    plot_curves(os.path.join(output_dir, "bpc_vs_tokens.png"), runs)
    plot_quality_vs_cache(os.path.join(output_dir, "quality_vs_kv_cache.png"), summary["variants"], block_size)
    names = ["bpc_vs_tokens.png", "quality_vs_kv_cache.png"]
    if plot_position_loss(os.path.join(output_dir, "loss_by_position.png"), summary["variants"]):
        names.append("loss_by_position.png")
    return names


def plot_position_loss(path: str, variants: list[dict]) -> dict[str, list[float]]:
    """Validation loss by token-position bucket, a line per design (mean over seeds); x: the buckets'
    upper edges on a log scale. Returns {variant: losses} read back from the lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = {}
    for v in variants:
        if v["status"] != "ok" or not v.get("position_loss"):
            continue
        buckets = v["position_loss"]
        (line,) = ax.plot([b["to"] for b in buckets], [b["loss"] for b in buckets], marker="o", label=v["variant"])
        drawn[v["variant"]] = [float(y) for y in line.get_ydata()]
        ax.set_xticks([b["to"] for b in buckets], [f"{b['from']}–{b['to']}" for b in buckets])
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    title = "Loss by position: what each design gains from context further back"
    xlabel = "position of the predicted token in the block"
    save_line_plot(fig, ax, path, xlabel, "validation loss (nats/token)", title)
    return drawn


def save_line_plot(fig, ax, path: str, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid and legend a one-panel line plot, save it as `path` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
