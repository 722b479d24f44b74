"""The comparison job: `scripts/compare.py --quick` trains real variants in seconds and reports them.

Two runs: the six designs with one seed (plus a variant that must fail), and a sweep of the K/V-head
range with two seeds, whose statistics, frontier and plots are recomputed here from results.json.
"""

import itertools
import json
import os
import re
import statistics
import subprocess
import sys

import pytest

from hf_attn.tools.comparison.compare import merge_comparisons
from hf_attn.tools.comparison.plots import plot_curves, plot_quality_vs_cache
from hf_attn.tools.comparison.stats import pareto_frontier
from hf_attn.tools.comparison.sweep import FAMILIES, sweep_variants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_KEYS = {
    "seed",
    "attention_type",
    "params",
    "attention_params",
    "kv_cache_bytes_per_token",
    "kv_cache_bytes_at_block",
    "val_loss",
    "val_bits_per_char",
    "train_tokens_per_s",
    "decode_tokens_per_s",
    "model_dir",
    "status",
}
DESIGNS = ["mha", "gqa", "mqa", "mla", "swa", "performer"]
BAD_VARIANT = "gqa:num_key_value_heads=3"  # 3 does not divide the tiny preset's 4 heads
BLOCK = 32  # the --quick block size


def run_compare(out, *flags):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "compare.py"), "--quick", "--no-progress"]
    cmd += ["--output-dir", str(out), *flags]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert os.path.isfile(out / "results.json"), proc.stderr[-3000:]
    with open(out / "results.json") as f:
        return proc, json.load(f)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    proc, results = run_compare(out, "--variants", *DESIGNS, BAD_VARIANT)
    return out, proc, results


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """The K/V-head range of the tiny preset (1, 2, 4 heads) with seeds 0 and 1: six short runs."""
    out = tmp_path_factory.mktemp("compare") / "sweep"
    proc, results = run_compare(out, "--sweep", "--seeds", "0,1", "--variants", "gqa")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, results


def test_failed_variant_is_reported_and_the_others_kept(quick_run):
    out, proc, results = quick_run
    assert proc.returncode == 1  # a failed variant makes the command fail, after the others ran
    assert [r["variant"] for r in results["runs"]] == [*DESIGNS, BAD_VARIANT]
    by_name = {r["variant"]: r for r in results["runs"]}
    bad = by_name[BAD_VARIANT]
    assert bad["status"] == "failed"
    assert "num_key_value_heads" in bad["error"] and "ValueError" in bad["error"]
    for name in DESIGNS:
        assert by_name[name]["status"] == "ok", by_name[name]
        assert os.path.isfile(os.path.join(by_name[name]["model_dir"], "model.safetensors"))
    report = (out / "report.md").read_text()
    assert f"{BAD_VARIANT} failed" in report
    assert re.search(r"Wall time: [\d,]+ s\.", report)  # the run's time is reported, not asserted on


def test_results_have_the_required_keys(quick_run):
    _, _, results = quick_run
    for record in results["runs"]:
        assert REQUIRED_KEYS <= set(record), REQUIRED_KEYS - set(record)
    types = [r["attention_type"] for r in results["runs"][:6]]
    assert types == ["mha", "gqa", "mqa", "mla", "mha", "performer"]  # swa is mha with a window
    swa, performer = results["runs"][4], results["runs"][5]
    assert swa["config"]["sliding_window"] == BLOCK // 4 and swa["config"]["seed"] == 0
    assert performer["config"]["performer_features"] is not None and performer["config"]["sliding_window"] is None


def expected_cache_bytes(cfg: dict, tokens: int) -> int:
    """The cache a design holds after `tokens` tokens, from its dims (float32: 4 bytes an element)."""
    if cfg["attention_type"] == "mla":
        per_layer = (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * tokens
    elif cfg["attention_type"] == "performer":  # per K/V head: sums of phi(k) v^T and phi(k), and a count row
        per_layer = cfg["num_key_value_heads"] * (cfg["performer_features"] + 1) * (cfg["head_dim"] + 1)
    else:  # transformers' sliding-window layer keeps the last window - 1 keys and values
        kept = tokens if cfg["sliding_window"] is None else min(tokens, cfg["sliding_window"] - 1)
        per_layer = 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * kept
    return per_layer * cfg["num_hidden_layers"] * 4


def test_kv_cache_bytes_equal_the_formula(quick_run):
    _, _, results = quick_run
    ok = [r for r in results["runs"] if r["status"] == "ok"]
    for r in ok:
        measured = r["kv_cache_bytes_at_block"]
        assert measured == expected_cache_bytes(r["config"], BLOCK) == r["kv_cache_formula_bytes_at_block"], r
        assert r["kv_cache_bounded"] == (r["variant"] in ("swa", "performer"))
        if not r["kv_cache_bounded"]:
            assert r["kv_cache_bytes_per_token"] * BLOCK == measured == r["kv_cache_formula_bytes_per_token"] * BLOCK
        assert r["attention_params"] == r["attention_params_formula"]
    mha, mqa, swa = ok[0], ok[2], ok[4]
    assert mha["kv_cache_bytes_per_token"] == 4 * mqa["kv_cache_bytes_per_token"]  # tiny preset: 4 heads
    assert swa["kv_cache_bytes_at_block"] * BLOCK == mha["kv_cache_bytes_at_block"] * (BLOCK // 4 - 1)


def test_report_numbers_match_results_json(quick_run):
    out, _, results = quick_run
    report = (out / "report.md").read_text()
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in report.splitlines()
        if re.match(r"^\| (mha|gqa|mqa|mla|swa|performer) \| ok", line)
    }
    assert set(rows) == set(DESIGNS)
    for r in results["runs"][:6]:
        row = rows[r["variant"]]
        assert row[2] == f"{r['params']:,}"
        assert row[3] == f"{r['attention_params']:,}"
        per_token = "bounded" if r["kv_cache_bounded"] else f"{r['kv_cache_bytes_per_token']:,.0f}"
        assert row[4].startswith(per_token + " (")
        assert row[5] == f"{r['kv_cache_bytes_at_block']:,} ({r['kv_cache_formula_bytes_at_block']:,})"
        assert row[6] == f"{r['val_loss']:.4f}"
        assert row[8] == f"{r['val_bits_per_char']:.4f}"
        assert row[10] == f"{r['decode_tokens_per_s']:,.1f}"
    for plot in ("bpc_vs_tokens.png", "quality_vs_kv_cache.png"):
        assert (out / plot).stat().st_size > 10_000
        assert f"]({plot})" in report
    assert "## Over seeds" not in report  # one seed: no spread to report


def test_one_seed_draws_lines_without_bands(quick_run, tmp_path):
    _, _, results = quick_run
    drawn = plot_curves(str(tmp_path / "curves.png"), results["runs"])
    assert set(drawn) == set(DESIGNS)
    for r in results["runs"][:6]:
        assert drawn[r["variant"]]["band"] is None
        assert drawn[r["variant"]]["mean"] == [h["val_bits_per_char"] for h in r["history"]]


def test_trained_variant_loads_in_a_pipeline(quick_run):
    from transformers import pipeline

    import hf_attn  # noqa: F401  registers the classes

    _, _, results = quick_run
    mla = results["runs"][3]
    generator = pipeline("text-generation", model=mla["model_dir"])
    text = generator("And God said", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("And God said") and len(text) > len("And God said")


# ---------------------------------------------------------------- seeds and the sweep


def test_every_sweep_point_trains_once_per_seed_on_the_same_data(sweep_run):
    _, results = sweep_run
    specs = sweep_variants("tiny", BLOCK, ["gqa"])
    assert specs == ["mqa", "gqa:num_key_value_heads=2", "mha"]
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [(v, s) for s in (0, 1) for v in specs]
    assert all(r["status"] == "ok" and r["config"]["seed"] == r["seed"] for r in results["runs"])
    hashes = {s: {r["first_batch_hash"] for r in results["runs"] if r["seed"] == s} for s in (0, 1)}
    assert len(hashes[0]) == len(hashes[1]) == 1 and hashes[0] != hashes[1]  # same order per seed, not across


def recomputed(results):
    """Mean, sd and the paired 95% interval to MHA per variant, from the per-seed runs alone."""
    stats = pytest.importorskip("scipy.stats")
    runs = results["runs"]
    bpc = {(r["variant"], r["seed"]): r["val_bits_per_char"] for r in runs}
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        values = [bpc[(variant, s)] for s in (0, 1)]
        diffs = [bpc[(variant, s)] - bpc[("mha", s)] for s in (0, 1)]
        half = stats.t.ppf(0.975, 1) * statistics.stdev(diffs) / 2**0.5 if variant != "mha" else None
        out[variant] = (statistics.mean(values), statistics.stdev(values), statistics.mean(diffs), half)
    return out


def test_summary_and_report_recompute_from_the_per_seed_numbers(sweep_run):
    out, results = sweep_run
    report = (out / "report.md").read_text()
    table = report[report.index("## Over seeds") :]
    for variant, (mean, sd, diff, half) in recomputed(results).items():
        summary = next(v for v in results["summary"]["variants"] if v["variant"] == variant)
        assert summary["val_bits_per_char"] == pytest.approx(mean, abs=1e-12)
        assert summary["val_bits_per_char_std"] == pytest.approx(sd, abs=1e-12)
        row = next(line for line in table.splitlines() if line.startswith(f"| {variant} |"))
        assert f"{mean:.4f} ± {sd:.4f} (n=2)" in row
        if variant == "mha":
            assert "reference" in row
            continue
        paired = summary["paired_vs_mha"]
        assert paired["mean"] == pytest.approx(diff, abs=1e-12)
        assert paired["half_width"] == pytest.approx(half, abs=5e-4 * half)  # the table's t: 12.706
        rule = "beats MHA" if diff + half < 0 else "trails MHA" if diff - half > 0 else "within the seed spread"
        assert paired["verdict"] == rule
        assert f"{paired['mean']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}] | {rule} |" in row
        assert f"**{variant}**: {rule}" in report


def test_every_point_is_on_the_frontier_plot(sweep_run, tmp_path):
    out, results = sweep_run
    expected = {
        v: (r["kv_cache_bytes_at_block"], mean, sd)
        for v, (mean, sd, _, _) in recomputed(results).items()
        for r in results["runs"][:3]
        if r["variant"] == v
    }
    points = list(expected.values())
    frontier = [list(expected)[i] for i in pareto_frontier([(x, y) for x, y, _ in points])]
    assert results["frontier"] == frontier
    family = lambda name: FAMILIES.get(name.partition(":")[0])  # noqa: E731
    drawn = plot_quality_vs_cache(
        str(tmp_path / "f.png"), results["summary"]["variants"], BLOCK, results["frontier"], family
    )
    assert set(drawn["points"]) == set(expected)
    for variant, (x, y, yerr) in drawn["points"].items():
        assert (x, y, yerr) == pytest.approx(expected[variant], rel=1e-9)
    assert len(drawn["frontier"]) == len(frontier)
    for point, variant in zip(drawn["frontier"], frontier):  # pytest.approx compares flat sequences only
        assert tuple(point) == pytest.approx(expected[variant][:2], rel=1e-9)
    report = (out / "report.md").read_text()
    assert (out / "sweep_frontier.png").stat().st_size > 10_000 and "](sweep_frontier.png)" in report
    sweep = report[report.index("## Sweep") : report.index("## Over seeds")]
    assert [v for v in expected if f"| {v} |" in sweep] == frontier  # the frontier table, by increasing cache


def test_curves_have_bands_over_seeds(sweep_run, tmp_path):
    _, results = sweep_run
    drawn = plot_curves(str(tmp_path / "curves.png"), results["runs"])
    for variant in drawn:
        runs = [r for r in results["runs"] if r["variant"] == variant]
        finals = [r["history"][-1]["val_bits_per_char"] for r in runs]
        assert drawn[variant]["mean"][-1] == pytest.approx(statistics.mean(finals), abs=1e-12)
        every = [h["val_bits_per_char"] for r in runs for h in r["history"]]
        assert drawn[variant]["band"] == pytest.approx({"low": min(every), "high": max(every)}, abs=1e-12)
    assert list(itertools.chain(drawn)) == ["mqa", "gqa:num_key_value_heads=2", "mha"]


def test_merging_one_folder_per_seed_gives_the_same_summary(sweep_run, tmp_path):
    """Seeds run on different machines merge into the comparison that ran them together."""
    out, results = sweep_run
    with open(out / "compare_args.json") as f:
        args = json.load(f)
    folders = []
    for seed in (0, 1):
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        runs = [r for r in results["runs"] if r["seed"] == seed]
        (folder / "results.json").write_text(json.dumps({"runs": runs}))
        (folder / "compare_args.json").write_text(json.dumps({**args, "seeds": [seed], "command": f"seed {seed}"}))
        folders.append(str(folder))
    merged = merge_comparisons(folders[::-1], str(tmp_path / "merged"))
    assert [(r["variant"], r["seed"]) for r in merged["runs"]] == [(r["variant"], r["seed"]) for r in results["runs"]]
    assert merged["summary"] == results["summary"] and merged["frontier"] == results["frontier"]
    assert "## Over seeds" in (tmp_path / "merged" / "report.md").read_text()

    with pytest.raises(ValueError, match="in more than one folder"):
        merge_comparisons([folders[0], folders[0]], str(tmp_path / "twice"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text((tmp_path / "seed-1" / "results.json").read_text())
    changed = {**args, "seeds": [1], "train": {**args["train"], "lr": 1.0}}
    (other / "compare_args.json").write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="differs from .* in 'lr'"):
        merge_comparisons([folders[0], str(other)], str(tmp_path / "mismatch"))


def test_probes_and_verdicts_are_reported_from_results_json(quick_run):
    out, _, results = quick_run
    report = (out / "report.md").read_text()
    summary = {v["variant"]: v for v in results["summary"]["variants"]}
    for r in results["runs"][:6]:
        probes = r["probes"]
        assert [(b["from"], b["to"]) for b in probes["position_loss"]] == [(0, 2), (2, 8), (8, 32)]
        assert [c["distance"] for c in probes["copy"]] == [4, 16]  # inside and past the window of 8
        assert [c["distance"] for c in probes["copy_passage"]] == [4, 16]
        assert r["short_context_loss"] == probes["position_loss"][0]["loss"]
        assert r["copy_loss_far"] == probes["copy"][-1]["second_copy_loss"]
        row = next(line for line in report.splitlines() if line.startswith(f"| {r['variant']} | ") and "–" not in line)
        losses = [f"{b['loss']:.4f}" for b in probes["position_loss"]]
        assert f"| {r['variant']} | {' | '.join(losses)} |" in report, row
        assert summary[r["variant"]]["position_loss"] == probes["position_loss"]  # one seed: the mean is the run
    verdicts = report[report.index("## Verdicts against MHA") : report.index("## Context")]
    swa = summary["swa"]["axes"]["far_position_loss"]["paired_vs_mha"]
    assert swa["mean"] == pytest.approx(
        results["runs"][4]["far_position_loss"] - results["runs"][0]["far_position_loss"]
    )
    assert f"{swa['mean']:+.4f} (one seed)" in verdicts
    assert (out / "loss_by_position.png").stat().st_size > 10_000 and "](loss_by_position.png)" in report


def test_the_comparison_trains_with_the_measured_recipe_and_reports_it():
    from hf_attn.cli.compare import parse_compare_args
    from hf_attn.tools.comparison.report import optimizer_text, schedule_text

    train = parse_compare_args([]).train
    assert (train.optimizer, train.lr_schedule, train.decay_fraction, train.min_lr_ratio) == ("muon", "wsd", 0.3, 0.0)
    assert parse_compare_args(["--optimizer", "adamw", "--lr-schedule", "cosine"]).train.optimizer == "adamw"
    text = f"{optimizer_text(vars(train))}, {schedule_text(vars(train))}"
    assert text == (
        "Muon lr 0.02 on the decoder layers' matrices and AdamW lr 0.002 on the rest, "
        "warm-up 30, stable, linear decay over the last 30% to 0x the peak"
    )
    adamw = {"lr": 0.002, "warmup_steps": 30, "min_lr_ratio": 0.1}  # a run from before the options
    assert f"{optimizer_text(adamw)}, {schedule_text(adamw)}" == "AdamW lr 0.002, warm-up 30, cosine to 0.1x the peak"
