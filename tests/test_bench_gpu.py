"""The GPU benchmark: the FLOPs formula by hand, and `scripts/bench_gpu.py --smoke`, every part on CPU.

The smoke run is what keeps the GPU benchmark from rotting between GPU runs: every part runs
(training throughput for every attention type, batched decode for MLA, MHA and DeepseekV3, the
training command launched twice with a resume), and the report must hold numbers for each.
"""

import json
import os
import subprocess
import sys

import pytest

from hf_attn import ATTENTION_TYPES, HfAttnConfig, HfAttnForCausalLM
from hf_attn.tools.benchmarks.gpu import flops_per_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("attention_type", ["mha", "gqa", "mla"])
def test_flops_per_token_is_6n_plus_the_attention_term(attention_type):
    config = HfAttnConfig.from_preset("tiny", attention_type=attention_type, tie_word_embeddings=True)
    model = HfAttnForCausalLM(config)
    d, i, v, layers = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    # N from the config's own formulas: attention and SwiGLU matrices per layer, and the (tied) head.
    n = layers * (config.attention_parameters_per_layer + 3 * d * i) + v * d
    if attention_type == "mla":
        n -= layers * config.kv_lora_rank  # kv_a_layernorm's weight: a norm, no matmul
        d_qk, d_v = config.qk_nope_head_dim + config.qk_rope_head_dim, config.v_head_dim
    else:
        d_qk = d_v = config.head_dim
    seq = 128
    expected = 6 * n + 6 * layers * config.num_attention_heads * seq * (d_qk + d_v)
    assert flops_per_token(model, seq) == expected


def test_smoke_run_reports_every_part(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench_gpu.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["skipped_parts"] == {}

    train = {row["attention_type"]: row for row in report["train"]}
    assert sorted(train) == sorted(ATTENTION_TYPES)
    for row in train.values():
        assert row["tokens_per_s"] > 0 and row["flops_per_token"] > 0, row
        assert 0 < row["final_loss"] < 20, row

    decode = {(r["model"], r["batch"], r["cache"]): r for r in report["decode"]}
    for model in ("mla", "mha", "deepseek_v3"):
        for batch in (1, 3):
            for cache in ("dynamic", "static"):
                assert decode[(model, batch, cache)]["tokens_per_s"] > 0, decode.get((model, batch, cache))

    fsdp = report["fsdp"]
    assert "accelerate refuses FSDP" in fsdp["skipped_fsdp"]
    assert "FSDP skipped" in proc.stdout
    first, resumed = fsdp["launches"]
    assert first["returncode"] == 0 and resumed["returncode"] == 0
    assert resumed["resumed"] and first["checkpoints"]
    # The FSDP command line and the one that ran share every training flag.
    ran_flags = first["command"].split(" -m hf_attn.cli.train ")[1]
    fsdp_flags = ran_flags.replace("--mixed-precision no", "--mixed-precision bf16")
    assert fsdp["fsdp_command"].endswith(" -m hf_attn.cli.train " + fsdp_flags)
    assert "--use_fsdp" in fsdp["fsdp_command"] and "HfAttnDecoderLayer" in fsdp["fsdp_command"]
    assert fsdp["final_model"]["finite"] and fsdp["final_model"]["last_logged_step"] == 6

    text = out.read_text()
    for heading in ("## Training", "## Decode", "## Training CLI under FSDP", "FSDP skipped"):
        assert heading in text
