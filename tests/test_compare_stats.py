"""The comparison's statistics and sweep ranges, on hand-made numbers: no training."""

import json
import math
import random
import statistics

import pytest

from hf_attn import HfAttnConfig
from hf_attn.tools.comparison.compare import (
    load_variant_points,
    parse_seeds,
    parse_variant,
    resolve_sizes,
    variant_label,
)
from hf_attn.tools.comparison.stats import (
    T_975,
    mean_std,
    paired_differences,
    pareto_frontier,
    summarize,
    t_interval,
    t_quantile_975,
    verdict,
)
from hf_attn.tools.comparison.sweep import sweep_variants


def test_pareto_frontier_of_hand_made_points():
    points = [
        (1, 5),  # 0 on the frontier
        (2, 4),  # 1 on the frontier
        (2, 6),  # 2 same bytes as 1, worse: dominated
        (3, 4),  # 3 same bits/char as 1, more bytes: dominated
        (4, 2),  # 4 on the frontier
        (4, 2),  # 5 a duplicate of 4: neither dominates the other, both stay
        (5, 3),  # 6 dominated by 4
        (6, 1),  # 7 on the frontier
        (0.5, 9),  # 8 the smallest cache: on the frontier however bad
    ]
    assert pareto_frontier(points) == [8, 0, 1, 4, 5, 7]
    assert pareto_frontier([(3.0, 1.0)]) == [0]
    assert pareto_frontier([]) == []
    with pytest.raises(ValueError, match="not finite"):
        pareto_frontier([(1.0, float("nan"))])


def _frontier_by_sweep(points):
    """A second algorithm: sort by bytes, keep a point when it beats the best bits/char so far (or
    repeats the last kept point exactly)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    kept, best = [], math.inf
    for i in order:
        if points[i][1] < best or (kept and points[i] == points[kept[-1]]):
            kept.append(i)
            best = points[i][1]
    return kept


def test_pareto_frontier_agrees_with_a_sort_and_sweep_on_random_points_with_ties():
    rng = random.Random(0)
    for _ in range(200):
        points = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(rng.randint(1, 12))]
        assert pareto_frontier(points) == _frontier_by_sweep(points), points


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof, value in T_975.items():
        assert abs(value - stats.t.ppf(0.975, dof)) < 5e-4, dof  # the table has 3 decimals
    assert t_quantile_975(35) == T_975[30] >= stats.t.ppf(0.975, 35)  # between rows: the wider one
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_t_interval_matches_scipy_and_statistics():
    stats = pytest.importorskip("scipy.stats")
    values = [-0.021, -0.004, -0.013]
    interval = t_interval(values)
    assert interval["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
    assert interval["std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=statistics.mean(values), scale=stats.sem(values))
    # the table's t has 3 decimals: the bounds agree to 5e-4 standard errors
    assert (interval["low"], interval["high"]) == pytest.approx((low, high), abs=5e-4 * stats.sem(values))
    assert mean_std([1.5]) == (1.5, None) and t_interval([1.5])["low"] is None


def test_verdict_follows_the_rule():
    assert verdict({"low": -0.03, "high": -0.001}) == "beats MHA"
    assert verdict({"low": 0.001, "high": 0.02}) == "trails MHA"
    assert verdict({"low": -0.01, "high": 0.02}) == "within the seed spread"
    assert verdict({"low": None, "high": None}) == "one seed: no interval"


def _run(variant, seed, bpc, status="ok"):
    return {
        "variant": variant,
        "seed": seed,
        "status": status,
        "attention_type": variant,
        "val_bits_per_char": bpc,
        "train_tokens_per_s": 100.0,
        "peak_train_memory_bytes": 1,
        "kv_cache_bytes_at_block": 10,
        "kv_cache_bounded": False,
    }


def test_paired_differences_use_the_seeds_both_finished():
    runs = [_run("mha", s, b) for s, b in ((0, 1.50), (1, 1.52), (2, 1.49), (3, 1.51))]
    runs += [_run("mla", 0, 1.46), _run("mla", 1, 1.47), _run("mla", 2, 1.445), _run("mla", 3, None, "failed")]
    paired = paired_differences(runs, "mla")
    assert paired["seeds"] == [0, 1, 2]
    assert paired["differences"] == pytest.approx([-0.04, -0.05, -0.045])
    assert paired_differences(runs, "mha") is None
    summary = summarize(runs)
    mla = summary["variants"][1]
    assert mla["n_seeds"] == 3 and mla["per_seed_bits_per_char"] == [1.46, 1.47, 1.445]
    assert mla["val_bits_per_char"] == pytest.approx(statistics.mean([1.46, 1.47, 1.445]))
    assert mla["val_bits_per_char_std"] == pytest.approx(statistics.stdev([1.46, 1.47, 1.445]))
    # differences -0.04, -0.05, -0.045: sd 0.005, half width 4.303 * 0.005 / sqrt(3) = 0.0124, all below 0
    assert mla["paired_vs_mha"]["high"] == pytest.approx(-0.045 + 4.303 * 0.005 / 3**0.5)
    assert mla["paired_vs_mha"]["verdict"] == "beats MHA"
    two_seeds = paired_differences([r for r in runs if r["seed"] < 2], "mla")  # 12.706 * 0.005: the spread wins
    assert two_seeds["verdict"] == "within the seed spread"


def test_sweep_ranges_follow_the_preset_and_block():
    small = sweep_variants("small", 128, ["mha", "gqa", "mqa", "mla", "swa", "performer"])
    assert small == [
        "mqa",
        "gqa:num_key_value_heads=2",
        "gqa:num_key_value_heads=4",
        "mha",
        *(f"mla:kv_lora_rank={r}" for r in (16, 32, 64, 128, 256)),  # d_h/2 .. 8 d_h, d_h = 32
        *(f"swa:sliding_window={w}" for w in (8, 16, 32, 64)),  # block/16 .. block/2
        *(f"performer:performer_features={m}" for m in (16, 32, 64, 128)),  # d_h/2 .. 4 d_h
    ]
    tiny = sweep_variants("tiny", 32, ["gqa", "swa"])  # 4 heads, d_h = 16
    assert tiny == ["mqa", "gqa:num_key_value_heads=2", "mha", *(f"swa:sliding_window={w}" for w in (2, 4, 8, 16))]
    for preset, block, specs in (
        ("small", 128, small),
        ("tiny", 32, sweep_variants("tiny", 32, ["mla", "performer"])),
    ):
        for spec in specs + tiny * (preset == "tiny"):
            _, overrides = parse_variant(spec)
            HfAttnConfig.from_preset(preset, **resolve_sizes(overrides, 64, block))  # every point is a valid model
    with pytest.raises(ValueError, match="without overrides"):
        sweep_variants("tiny", 32, ["gqa:num_key_value_heads=2"])


def test_sizes_labels_and_seeds():
    assert resolve_sizes({"sliding_window": "block/4", "q_lora_rank": "hidden/2", "x": "text"}, 256, 128) == {
        "sliding_window": 32,
        "q_lora_rank": 128,
        "x": "text",
    }
    with pytest.raises(ValueError, match="sliding_window"):
        resolve_sizes({"sliding_window": "block/64"}, 256, 32)
    assert variant_label("gqa:num_key_value_heads=2") == "gqa kv=2" and variant_label("mha") == "mha"
    assert variant_label("performer:performer_features=16") == "performer m=16"
    assert parse_seeds("0,1,2") == (0, 1, 2)
    for bad in ("0,0", "a,1", "-1", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_variant_points_read_both_results_formats(tmp_path):
    runs = [_run("mha", 0, 1.5), _run("mha", 1, 1.4)]
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    new.write_text(json.dumps({"runs": runs, "summary": summarize(runs)}))
    old.write_text(json.dumps(runs[:1]))  # written before seeds: a list of runs
    (point,) = load_variant_points(str(new))
    assert point["variant"] == "mha" and point["val_bits_per_char"] == pytest.approx(1.45)
    assert load_variant_points(str(old)) == runs[:1]
