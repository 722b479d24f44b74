"""The comparison's statistics: mean and spread over seeds, paired differences to MHA, the Pareto frontier.

Pure functions on plain numbers and result records, so that tests can recompute every figure the
report prints. The rule the report applies (see `verdict`): a design beats (or trails) MHA beyond
the seed-to-seed spread when the 95% t-interval of its paired per-seed difference to MHA excludes 0.
Pairing by seed removes what both runs of a seed share (the data order): the interval is about the
design, not about the luck of a seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

REFERENCE = "mha"
CONFIDENCE = 0.95
# Two-sided 95% quantiles t_{0.975, dof} of Student's t distribution, from the table of upper
# critical values in the NIST/SEMATECH e-Handbook of Statistical Methods, section 1.3.6.7.2
# (https://www.itl.nist.gov/div898/handbook/eda/section3/eda3672.htm). Between tabulated degrees of
# freedom the next lower one is used, which widens the interval slightly (conservative).
T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
    29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 100: 1.984,
}  # fmt: skip
RULE = (
    "a design beats (trails) MHA beyond the seed-to-seed spread when the 95% t-interval of its paired "
    "per-seed difference in final validation bits/char (design minus MHA, same seed) lies wholly below "
    "(above) 0; an interval that contains 0 means the difference is within the spread"
)


def t_quantile_975(dof: int) -> float:
    """t_{0.975, dof} from `T_975` (the next lower tabulated dof when `dof` is not in the table)."""
    if not isinstance(dof, int) or dof < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {dof!r}")
    return T_975[max(d for d in T_975 if d <= dof)]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator); the deviation is None for n = 1."""
    if not values:
        raise ValueError("mean_std: no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: Sequence[float]) -> dict:
    """The mean of `values` with its 95% t-interval (n - 1 degrees of freedom); no interval for n = 1."""
    mean, std = mean_std(values)
    n = len(values)
    if std is None:
        return {"n": 1, "mean": mean, "std": None, "t_quantile": None, "half_width": None, "low": None, "high": None}
    t = t_quantile_975(n - 1)
    half = t * std / math.sqrt(n)
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "t_quantile": t,
        "half_width": half,
        "low": mean - half,
        "high": mean + half,
    }


def verdict(interval: dict | None) -> str:
    """'beats MHA', 'trails MHA' or 'within the seed spread' by `RULE`; 'one seed: no interval' for n = 1."""
    if interval is None or interval["low"] is None:
        return "one seed: no interval"
    if interval["high"] < 0:
        return "beats MHA"
    if interval["low"] > 0:
        return "trails MHA"
    return "within the seed spread"


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point dominates, ordered by x (then y, then index).

    Lower is better on both axes (cache bytes, bits/char). A point is dominated when another is at
    most as large on both axes and strictly smaller on one. Exact duplicates do not dominate each
    other: both stay on the frontier. A point with the same x as a better one is dominated.
    """
    for x, y in points:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"pareto_frontier: point ({x}, {y}) is not finite")
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(qx <= x and qy <= y and (qx < x or qy < y) for qx, qy in points)
    ]
    return sorted(front, key=lambda i: (points[i][0], points[i][1], i))


def paired_differences(
    runs: list[dict], variant: str, reference: str = REFERENCE, metric: str = "val_bits_per_char"
) -> dict | None:
    """Per seed, `variant`'s `metric` (final bits/char by default) minus `reference`'s, over the seeds
    where both finished and recorded it."""
    ours = _metric_by_seed(runs, variant, metric)
    theirs = _metric_by_seed(runs, reference, metric)
    seeds = sorted(set(ours) & set(theirs))
    if variant == reference or not seeds:
        return None
    differences = [ours[s] - theirs[s] for s in seeds]
    interval = t_interval(differences)
    return {
        "reference": reference,
        "seeds": seeds,
        "differences": differences,
        **interval,
        "verdict": verdict(interval),
    }


def _metric_by_seed(runs: list[dict], variant: str, metric: str) -> dict[int, float]:
    return {
        r["seed"]: r[metric]
        for r in runs
        if r["variant"] == variant and r["status"] == "ok" and r.get(metric) is not None
    }


def summarize_variant(runs: list[dict], variant: str) -> dict:
    """One variant over its seeds: per-seed bits/char, mean, standard deviation, and the paired
    difference to MHA; sizes and speeds from its finished runs (sizes do not depend on the seed)."""
    ok = [r for r in runs if r["variant"] == variant and r["status"] == "ok"]
    summary = {"variant": variant, "n_seeds": len(ok), "seeds": [r["seed"] for r in ok]}
    if not ok:
        return {**summary, "status": "failed", "val_bits_per_char": None, "paired_vs_mha": None}
    bpc = [r["val_bits_per_char"] for r in ok]
    mean, std = mean_std(bpc)
    first = ok[0]
    return {
        **summary,
        "status": "ok",
        "label": first.get("label", variant),
        "attention_type": first["attention_type"],
        "per_seed_bits_per_char": bpc,
        "val_bits_per_char": mean,
        "val_bits_per_char_std": std,
        **{
            k: first.get(k)
            for k in (
                "params",
                "attention_params",
                "kv_cache_bounded",
                "kv_cache_bytes_per_token",
                "kv_cache_bytes_at_block",
                "kv_cache_dtype",
                "block_size",
                "attention_dims",
            )
        },
        "train_tokens_per_s": mean_std([r["train_tokens_per_s"] for r in ok])[0],
        "decode_tokens_per_s": _mean_or_none([r.get("decode_tokens_per_s") for r in ok]),
        "peak_train_memory_bytes": max(r["peak_train_memory_bytes"] for r in ok),
        "paired_vs_mha": paired_differences(runs, variant),
        "axes": axes_vs_reference(runs, variant),
        **probe_means(ok),
    }


def probe_means(ok: list[dict]) -> dict:
    """The probes' numbers averaged over a variant's seeds: loss per position bucket, losses per copy distance."""
    probed = [r["probes"] for r in ok if r.get("probes")]
    if not probed:
        return {}
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    buckets = [
        {**b, "loss": mean([p["position_loss"][i]["loss"] for p in probed])}
        for i, b in enumerate(probed[0]["position_loss"])
    ]
    keys = ("first_copy_loss", "second_copy_loss", "ratio")
    copies = {
        kind: [
            {**c, **{k: mean([p[kind][i][k] for p in probed]) for k in keys}} for i, c in enumerate(probed[0][kind])
        ]
        for kind in ("copy", "copy_passage")
        if kind in probed[0]
    }
    return {"position_loss": buckets, **copies}


# The axes of the report's verdicts beside bits/char: the run record's field, and which way is better.
# Loss by position and copying: `probes`; decode speed: `compare.decode_tokens_per_s`.
AXES = {
    "short_context_loss": "lower",
    "far_position_loss": "lower",
    "copy_loss_far": "lower",
    "decode_tokens_per_s": "higher",
}


def axis_verdict(interval: dict | None, better: str) -> str:
    """'better than MHA', 'worse than MHA' or 'within the seed spread' by the 95% interval of the paired
    differences (design minus MHA) and the direction that is better; 'one seed: no interval' for n = 1."""
    if interval is None or interval["low"] is None:
        return "one seed: no interval"
    if interval["high"] < 0 or interval["low"] > 0:
        lower = interval["high"] < 0
        return "better than MHA" if lower == (better == "lower") else "worse than MHA"
    return "within the seed spread"


def axes_vs_reference(runs: list[dict], variant: str, axes: dict[str, str] | None = None) -> dict:
    """Per axis (`AXES` by default): the variant's mean over seeds and its paired difference to MHA
    with the interval and the verdict; axes the runs did not record are left out."""
    out = {}
    for metric, better in (AXES if axes is None else axes).items():
        values = list(_metric_by_seed(runs, variant, metric).values())
        if not values:
            continue
        paired = paired_differences(runs, variant, metric=metric)
        if paired is not None:
            paired["verdict"] = axis_verdict(paired, better)
        out[metric] = {"mean": mean_std(values)[0], "better": better, "paired_vs_mha": paired}
    return out


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return mean_std(values)[0] if values else None


def summarize(runs: list[dict]) -> dict:
    """The summary that results.json and report.md carry: per variant (in run order) its statistics."""
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    return {
        "reference": REFERENCE,
        "confidence": CONFIDENCE,
        "rule": RULE,
        "seeds": sorted({r["seed"] for r in runs}),
        "variants": [summarize_variant(runs, v) for v in variants],
    }


def frontier_of(summary: dict) -> list[str]:
    """The variants on the Pareto frontier of (KV-cache bytes at the block length, mean bits/char)."""
    ok = [v for v in summary["variants"] if v["status"] == "ok"]
    points = [(v["kv_cache_bytes_at_block"], v["val_bits_per_char"]) for v in ok]
    return [ok[i]["variant"] for i in pareto_frontier(points)]
