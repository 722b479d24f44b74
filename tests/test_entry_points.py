"""Every console script in pyproject.toml, run as `pip install` made it, exits 0 when it succeeds.

`sys.exit(main())` turns any value a command returns into exit status 1, so each command's success
path runs here as a subprocess on tiny inputs, offline, and its status and output are checked. The
list of commands comes from pyproject.toml: a new one without a case here fails the first test.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import entry_point
from transformers import AutoModelForCausalLM

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
CORPUS = ["--max-chars", "20000"]  # the offline default corpus, cut short
TRAIN = ["--preset", "tiny", "--attention-type", "gqa", "--block-size", "32", "--batch-size", "4",
         "--max-steps", "2", "--eval-every", "0", "--save-every", "0", "--sample-tokens", "2",
         "--tracker", "none", "--no-progress", *CORPUS]  # fmt: skip


def run(name: str, *args) -> subprocess.CompletedProcess:
    """`name ARGS...` from the repository root (the default tokenizer is ./tokenizer); it must exit 0."""
    proc = subprocess.run([*entry_point(name), *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def summary(train_proc: subprocess.CompletedProcess) -> dict:
    """The JSON summary hf-attn-train prints last."""
    return json.loads(train_proc.stdout[train_proc.stdout.index("{") :])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """hf-attn-train's success path: a two-step tiny GQA run, which the other commands then read."""
    out = tmp_path_factory.mktemp("train") / "run"
    return out, run("hf-attn-train", *TRAIN, "--output-dir", out)


def check_train(trained, tmp_path):
    out, proc = trained
    assert summary(proc)["model_dir"] == str(out) and summary(proc)["steps"] == 2
    assert (out / "model.safetensors").is_file()


def check_evaluate(trained, tmp_path):
    out, proc = trained
    metrics = json.loads(run("hf-attn-evaluate", out, *CORPUS, "--json").stdout)  # one JSON object, nothing else
    assert metrics["block_size"] == 32  # read from the run's train_args.json
    assert metrics["val_loss"] == pytest.approx(summary(proc)["val_loss"])  # the run's final evaluation


def check_export(trained, tmp_path):
    out, _ = trained
    proc = run("hf-attn-export", out, "--format", "llama", "--out", tmp_path / "llama")
    assert f"wrote {tmp_path / 'llama'} (llama)" in proc.stdout
    assert json.loads((tmp_path / "llama" / "config.json").read_text())["model_type"] == "llama"


def check_convert(trained, tmp_path):
    out, _ = trained
    proc = run("hf-attn-convert", out, "--kv-lora-rank", "24", "--rope-dim", "8", "--output-dir", tmp_path / "mla",
               "--calibration-tokens", "64", "--calibration-block-size", "32", *CORPUS)  # fmt: skip
    printed = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert printed["kv_cache_elements_per_token"] == (24 + 8) * 2  # the tiny preset has 2 layers
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "mla").config.attention_type == "mla"


def check_import(trained, tmp_path):
    out, _ = trained
    run("hf-attn-export", out, "--format", "llama", "--out", tmp_path / "llama")  # a LlamaForCausalLM folder
    proc = run("hf-attn-import", tmp_path / "llama", "--output-dir", tmp_path / "imported")
    assert f"wrote {tmp_path / 'imported'}" in proc.stdout
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "imported").config.attention_type == "gqa"


def check_push_to_hub(trained, tmp_path):
    out, _ = trained
    proc = run("hf-attn-push-to-hub", out, "--repo-id", "alice/tiny-gqa", "--dry-run", tmp_path / "staged")
    assert "nothing uploaded" in proc.stdout
    assert {"README.md", "config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "staged").iterdir()}


def check_train_tokenizer(trained, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"In the beginning was line {i}, and the line was short.\n" for i in range(400)))
    tok = tmp_path / "tok"
    proc = run("hf-attn-train-tokenizer", "--text-files", text, "--vocab-size", "300", "--output-dir", tok)
    assert "vocab size: 300" in proc.stdout and (tok / "tokenizer.json").is_file()


def check_compare(trained, tmp_path):
    out = tmp_path / "compare"
    proc = run("hf-attn-compare", "--quick", "--variants", "mqa", "--max-tokens", "128", "--no-progress",
               "--output-dir", out)  # fmt: skip
    assert f"report: {out}/report.md" in proc.stdout
    assert [r["status"] for r in json.loads((out / "results.json").read_text())["runs"]] == ["ok"]


def check_mqar(trained, tmp_path):
    out = tmp_path / "mqar"
    proc = run("hf-attn-mqar", "--quick", "--variants", "mha", "--seeds", "0", "--no-progress", "--output-dir", out)
    assert f"report: {out}/report.md" in proc.stdout
    assert [r["status"] for r in json.loads((out / "results.json").read_text())["runs"]] == ["ok"]


def check_demo(trained, tmp_path):
    # Serving blocks until interrupted (tests/test_demo.py drives the page); --help is its path to status 0.
    proc = run("hf-attn-demo", "--help")
    assert proc.stdout.startswith("usage: hf-attn-demo") and "--port" in proc.stdout


CASES = {
    "hf-attn-train": check_train,
    "hf-attn-evaluate": check_evaluate,
    "hf-attn-export": check_export,
    "hf-attn-convert": check_convert,
    "hf-attn-import": check_import,
    "hf-attn-push-to-hub": check_push_to_hub,
    "hf-attn-train-tokenizer": check_train_tokenizer,
    "hf-attn-compare": check_compare,
    "hf-attn-mqar": check_mqar,
    "hf-attn-demo": check_demo,
}


def test_every_console_script_has_a_success_path_here():
    assert set(CASES) == set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_success_exits_zero(name, trained, tmp_path):
    CASES[name](trained, tmp_path)
