"""The comparison job: `scripts/compare.py --quick` trains real variants in seconds and reports them."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_KEYS = {
    "attention_type",
    "params",
    "attention_params",
    "kv_cache_bytes_per_token",
    "val_loss",
    "val_bits_per_char",
    "train_tokens_per_s",
    "decode_tokens_per_s",
    "model_dir",
    "status",
}
BAD_VARIANT = "gqa:num_key_value_heads=3"  # 3 does not divide the tiny preset's 4 heads


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "compare.py"),
        "--quick",
        "--no-progress",
        "--output-dir",
        str(out),
        "--variants",
        "mha",
        "gqa",
        "mqa",
        "mla",
        BAD_VARIANT,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    with open(out / "results.json") as f:
        results = json.load(f)
    return out, proc, results, elapsed


def test_quick_run_finishes_within_a_minute(quick_run):
    _, proc, results, elapsed = quick_run
    assert len(results) == 5
    assert elapsed < 60, f"--quick took {elapsed:.0f} s"


def test_failed_variant_is_reported_and_the_others_kept(quick_run):
    out, proc, results, _ = quick_run
    assert proc.returncode == 1  # a failed variant makes the command fail, after the others ran
    by_name = {r["variant"]: r for r in results}
    bad = by_name[BAD_VARIANT]
    assert bad["status"] == "failed"
    assert "num_key_value_heads" in bad["error"] and "ValueError" in bad["error"]
    for name in ("mha", "gqa", "mqa", "mla"):
        assert by_name[name]["status"] == "ok", by_name[name]
        assert os.path.isfile(os.path.join(by_name[name]["model_dir"], "model.safetensors"))
    report = (out / "report.md").read_text()
    assert f"{BAD_VARIANT} failed" in report


def test_results_have_the_required_keys(quick_run):
    _, _, results, _ = quick_run
    for record in results:
        assert REQUIRED_KEYS <= set(record), REQUIRED_KEYS - set(record)
    assert [r["attention_type"] for r in results[:4]] == ["mha", "gqa", "mqa", "mla"]


def test_kv_cache_bytes_equal_the_formula(quick_run):
    _, _, results, _ = quick_run
    for r in (r for r in results if r["status"] == "ok"):
        cfg = r["config"]
        if r["attention_type"] == "mla":
            per_layer = cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]
        else:
            per_layer = 2 * cfg["num_key_value_heads"] * cfg["head_dim"]
        formula = per_layer * cfg["num_hidden_layers"] * 4  # float32 cache
        assert r["kv_cache_bytes_per_token"] == formula == r["kv_cache_formula_bytes_per_token"]
        assert r["attention_params"] == r["attention_params_formula"]
    mha, mqa = results[0], results[2]
    assert mha["kv_cache_bytes_per_token"] == 4 * mqa["kv_cache_bytes_per_token"]  # tiny preset: 4 heads


def test_report_numbers_match_results_json(quick_run):
    out, _, results, _ = quick_run
    report = (out / "report.md").read_text()
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in report.splitlines()
        if re.match(r"^\| (mha|gqa|mqa|mla) \| ok", line)
    }
    assert set(rows) == {"mha", "gqa", "mqa", "mla"}
    for r in results[:4]:
        row = rows[r["variant"]]
        assert row[2] == f"{r['params']:,}"
        assert row[3] == f"{r['attention_params']:,}"
        assert row[4].startswith(f"{r['kv_cache_bytes_per_token']:,.0f} ")
        assert row[5] == f"{r['val_loss']:.4f}"
        assert row[7] == f"{r['val_bits_per_char']:.4f}"
        assert row[9] == f"{r['decode_tokens_per_s']:,.1f}"
    for plot in ("bpc_vs_tokens.png", "quality_vs_kv_cache.png"):
        assert (out / plot).stat().st_size > 10_000
        assert f"]({plot})" in report


def test_trained_variant_loads_in_a_pipeline(quick_run):
    from transformers import pipeline

    import hf_attn  # noqa: F401  registers the classes

    _, _, results, _ = quick_run
    mla = results[3]
    generator = pipeline("text-generation", model=mla["model_dir"])
    text = generator("And God said", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("And God said") and len(text) > len("And God said")
