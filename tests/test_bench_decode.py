"""The decode and capacity benchmarks: peak-memory sampling, the capacity count and its check, the plot,
and both scripts end to end at toy sizes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import DESIGNS

from hf_attn.tools.benchmarks.capacity import capacity, check_capacity, plot_capacity, sequence_cache
from hf_attn.tools.benchmarks.decode import DECODE_PATHS, decode_configs
from hf_attn.tools.benchmarks.memory import PeakRSS, return_freed_memory
from hf_attn.utils import cache_bytes

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_peak_rss_sees_a_tensor_allocated_and_freed_inside():
    return_freed_memory()
    with PeakRSS(interval=0.001) as peak:
        block = torch.ones(16 * 2**20)  # 64 MiB, written so every page is resident
        total = block.sum().item()
        del block
    assert total == 16 * 2**20
    assert 60 <= peak.peak_bytes / 2**20 <= 100
    with PeakRSS() as idle:
        pass
    assert idle.peak_bytes < 8 * 2**20


@pytest.mark.parametrize("design", DESIGNS)
def test_capacity_is_checked_by_allocating(make_model, design):
    model = make_model(design)
    cache = sequence_cache(model, seq_len=24)
    per_sequence = cache_bytes(cache)
    budget = 10 * per_sequence + per_sequence // 2
    assert capacity(per_sequence, budget) == 10
    check = check_capacity(cache, budget)
    assert check == {"sequences": 10, "allocated_bytes": 10 * per_sequence, "fits": True}
    assert cache_bytes(cache) == per_sequence  # the measured cache itself is left at batch 1
    if design != "performer":  # Performer keeps its state in float32 whatever the elements count says
        assert per_sequence == model.config.kv_cache_elements(24) * 4
    with pytest.raises(ValueError, match="bytes_per_sequence"):
        capacity(0, budget)


def test_mla_holds_enough_more_sequences_than_mha_at_8_heads():
    """The goal on the benchmark's trunk, from the config formulas (the script measures the same bytes)."""
    configs = decode_configs(vocab_size=256, max_positions=8192, window=1024)
    assert configs["mla"].num_attention_heads == configs["mha"].num_attention_heads == 8
    budget = 2 * 2**30
    held = {name: capacity(config.kv_cache_elements(8192) * 2, budget) for name, config in configs.items()}
    assert held["mla"] / held["mha"] >= 3.5
    assert held["mha"] == 32 and held["mqa"] == 8 * held["mha"]  # 64 MiB and 8 MiB per bf16 sequence


def test_plot_capacity_draws_the_counts(tmp_path):
    counts = {"mha": 32, "mla": 204, "performer": 1008}
    drawn = plot_capacity(str(tmp_path / "capacity.png"), counts, "test")
    assert drawn == counts
    assert (tmp_path / "capacity.png").stat().st_size > 1000


def run_script(name: str, *args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], check=True, env=env, cwd=ROOT)


def test_bench_decode_runs_each_path_with_the_same_tokens(tmp_path):
    """At toy size, for MLA, its DeepseekV3 twin and the windowed MHA (a cache copied across the batch
    for each layer kind); every design's paths are checked more cheaply in test_decode_paths.py."""
    out = tmp_path / "decode.json"
    args = ["--contexts", "12", "--batches", "3", "--steps", "2", "--repeats", "1", "--compile-cells", "none"]
    args += ["--models", "mla", "deepseek_v3", "mha_window", "--vocab-size", "256", "--window", "8"]
    run_script("bench_decode.py", *args, "--threads", "1", "--json", str(out))
    cells = json.loads(out.read_text())["results"]["cells"]
    assert set(cells) == {"12x3"} and set(cells["12x3"]) == {"mla", "deepseek_v3", "mha_window"}
    for name, result in cells["12x3"].items():
        paths = [p for p in DECODE_PATHS if p in result]
        assert paths == (["dynamic", "static"] if name == "deepseek_v3" else ["dynamic", "static", "generate"])
        assert all(result[p]["same_tokens"] for p in paths), name
        assert result["best"] in paths and all(result[p]["tok_s"] > 0 for p in paths)
    assert cells["12x3"]["mha_window"]["static"]["cache_mib"] > cells["12x3"]["mla"]["static"]["cache_mib"]


def test_bench_capacity_measures_and_checks_every_design(tmp_path):
    out, plot = tmp_path / "capacity.json", tmp_path / "capacity.png"
    args = ["--seq-len", "64", "--budget-gib", "0.01", "--vocab-size", "256", "--window", "16", "--threads", "1"]
    run_script("bench_capacity.py", *args, "--plot", str(plot), "--json", str(out))
    results = json.loads(out.read_text())["results"]
    assert results["mha"]["bytes_per_token"] == 8192  # 2 (K, V) * 8 heads * 64 * 4 layers * 2 bytes
    assert results["mha_window"]["bytes_per_sequence"] == 15 * 8192  # the window's last 15 tokens
    assert all(r["check"]["fits"] for r in results.values())
    assert plot.stat().st_size > 1000
