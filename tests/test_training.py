"""The training loop: golden loss curve, kill-and-resume, two processes, outputs, errors.

Runs use the tiny preset on the first 100k characters of the default corpus with a fresh
512-token BPE. Regenerate the golden curve after an intended change with

    python tests/test_training.py --regenerate-golden
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import entry_point

from hf_attn.cli.train import main as train_main
from hf_attn.train import CorpusSpec, ModelOptions, TrainArgs, train
from hf_attn.train.loop import latest_checkpoint
from hf_attn.utils import read_jsonl

# In-process runs on one torch thread: tiny models gain nothing from more, and lose much when cores are shared.
pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "tiny_loss.json"
TINY = dict(
    train_tokenizer_vocab=512,
    block_size=64,
    batch_size=8,
    lr=3e-3,
    warmup_steps=5,
    tracker="none",
    progress=False,
    sample_tokens=8,
)
TINY_FLAGS = [
    "--preset", "tiny", "--train-tokenizer-vocab", "512", "--max-chars", "100000", "--block-size", "64",
    "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5", "--tracker", "none", "--no-progress",
    "--sample-tokens", "8",
]  # fmt: skip


def tiny_args(output_dir, model: dict | None = None, **kw) -> TrainArgs:
    model = model or {}
    if "init_from" not in model:
        model = {"preset": "tiny", **model}
    return TrainArgs(
        output_dir=str(output_dir),
        model=ModelOptions(**model),
        corpus=CorpusSpec(max_chars=100_000),
        **{**TINY, **kw},
    )


def golden_run(output_dir) -> list[dict]:
    train(tiny_args(output_dir, max_steps=30, eval_every=10, log_every=1, save_every=0))
    return read_jsonl(os.path.join(output_dir, "train_log.jsonl"))


def script_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# ---------------------------------------------------------------- golden loss


def test_golden_loss_curve(tmp_path):
    """A seeded 30-step run reproduces the checked-in loss curve (torchtitan's loss-compare idea)."""
    log = golden_run(tmp_path)
    golden = json.loads(GOLDEN.read_text())
    assert [r["step"] for r in log] == golden["steps"]
    losses = [r["train_loss"] for r in log]
    # Tolerance for float reduction order across CPUs/BLAS builds; a real regression moves it far more.
    assert losses == pytest.approx(golden["train_loss"], abs=0.02)
    assert losses[-1] < losses[0] - 1.0  # and it learns


# ---------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_args(out, max_steps=20, eval_every=10, save_every=10, tracker="tensorboard"))
    return out, result


def test_outputs_hold_the_real_numbers(finished_run):
    out, result = finished_run
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20]
    required = {"step", "tokens", "train_loss", "val_loss", "val_bits_per_char", "val_bits_per_byte",
                "perplexity", "lr", "elapsed_s", "step_time_s"}  # fmt: skip
    assert required <= set(records[-1])
    last = records[-1]
    assert result["val_loss"] == last["val_loss"] and result["val_bits_per_char"] == last["val_bits_per_char"]
    assert result["steps"] == 20 and result["tokens"] == 20 * 8 * 64 == last["tokens"]
    assert result["history"] == records
    report = (out / "report.md").read_text()
    assert f"| validation loss (nats/token) | {last['val_loss']:.4f} |" in report
    assert f"| validation bits per character | {last['val_bits_per_char']:.4f} |" in report
    assert f"| perplexity | {last['perplexity']:.3f} |" in report
    assert f"| parameters | {result['params']:,} |" in report
    assert f"| KV cache bytes per token (16-bit) | {result['kv_cache_bytes_per_token']:,} |" in report
    assert result["sample"] in report and result["sample"].startswith("The ")
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    # kv cache: tiny mha = 2 layers * 2 (K and V) * 4 heads * 16 head_dim elements, 2 bytes each
    assert result["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 4 * 16
    assert latest_checkpoint(str(out)).endswith("checkpoint-10")


def test_saved_model_loads_with_remote_code_and_pipeline(finished_run):
    out, result = finished_run
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, pipeline\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        "assert 'hf_attn' not in sys.modules, 'must load from the saved modeling code'\n"
        f"p = pipeline('text-generation', model={str(out)!r}, trust_remote_code=True)\n"
        "print(json.dumps([m.num_parameters(), p('The ', max_new_tokens=4, do_sample=False)[0]['generated_text']]))\n"
    )
    # cwd outside the repo and no PYTHONPATH: hf_attn is not importable there
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=out, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    params, text = json.loads(proc.stdout.strip().splitlines()[-1])
    assert params == result["params"] and text.startswith("The ")


def test_config_file_and_tokenizer_dir_of_a_previous_run(finished_run, tmp_path):
    """--config takes a saved config.json (its token ids included) and --tokenizer a saved run's folder.

    The saved file has num_key_value_heads=4 written out, so switching to MQA must set it too."""
    out, first = finished_run
    model = dict(config=str(out / "config.json"), attention_type="mqa", config_overrides="num_key_value_heads=1")
    args = tiny_args(tmp_path / "again", model=model, tokenizer=str(out), train_tokenizer_vocab=None, max_steps=2,
                     eval_every=2, save_every=0)  # fmt: skip
    result = train(args)
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["attention_type"] == "mqa" and saved["num_key_value_heads"] == 1
    assert saved["vocab_size"] == 512 and saved["eos_token_id"] == 0
    assert result["params"] < first["params"]  # one K/V head instead of four


def test_init_from_starts_at_the_saved_weights_and_keeps_learning(finished_run, tmp_path):
    """--init-from: the evaluation before any step equals the source's last one; fine-tuning lowers it."""
    out, first = finished_run
    args = tiny_args(tmp_path / "tuned", model=dict(init_from=str(out)), train_tokenizer_vocab=None, max_steps=12,
                     eval_every=12, eval_on_start=True, save_every=0, lr=3e-3, warmup_steps=2)  # fmt: skip
    result = train(args)
    start, end = read_jsonl(tmp_path / "tuned" / "metrics.jsonl")
    assert start["step"] == 0 and start["train_loss"] is None
    assert start["val_loss"] == pytest.approx(first["val_loss"], abs=1e-5)
    assert end["val_loss"] < start["val_loss"] - 0.05
    assert result["params"] == first["params"]
    saved = json.loads((tmp_path / "tuned" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 256  # the model's context, not transformers' 1e30 placeholder


def test_init_from_refuses_a_contradicting_shape(finished_run, tmp_path):
    out, _ = finished_run
    bad = dict(init_from=str(out), config_overrides="num_hidden_layers=3")
    with pytest.raises(
        ValueError, match="num_hidden_layers=3 contradicts the --init-from model .* num_hidden_layers=2"
    ):
        train(tiny_args(tmp_path / "a", model=bad, train_tokenizer_vocab=None, max_steps=1))
    with pytest.raises(ValueError, match="--preset 'tiny' contradicts --init-from"):
        train(tiny_args(tmp_path / "b", model=dict(init_from=str(out), preset="tiny"), train_tokenizer_vocab=None))
    with pytest.raises(ValueError, match="--train-tokenizer-vocab contradicts --init-from"):
        train(tiny_args(tmp_path / "c", model=dict(init_from=str(out)), max_steps=1))


# ---------------------------------------------------------------- resume


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    flags = TINY_FLAGS + ["--max-steps", "100", "--eval-every", "25", "--save-every", "10", "--log-every", "5"]
    killed = tmp_path / "killed"
    cmd = [*entry_point("hf-attn-train"), *flags, "--output-dir", str(killed)]
    proc = subprocess.Popen(cmd, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while latest_checkpoint(str(killed)) is None and proc.poll() is None:  # pytest-timeout bounds a hang
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    assert not (killed / "model.safetensors").exists()
    ckpt = latest_checkpoint(str(killed))
    killed_at = int(ckpt.rsplit("-", 1)[1])
    assert killed_at < 100
    # A save interrupted by the kill leaves a temporary folder; resume must ignore and remove it.
    (killed / "checkpoints" / "tmp-checkpoint-999").mkdir()
    (killed / "checkpoints" / "tmp-checkpoint-999" / "model.safetensors").write_bytes(b"truncated")

    resumed = subprocess.run(cmd + ["--resume"], env=script_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {ckpt}" in resumed.stderr
    assert not (killed / "checkpoints" / "tmp-checkpoint-999").exists()

    reference = tmp_path / "reference"
    train(tiny_args(reference, max_steps=100, eval_every=25, save_every=0, log_every=5))
    for name in ("metrics.jsonl", "train_log.jsonl"):
        got, want = read_jsonl(killed / name), read_jsonl(reference / name)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        assert [r["tokens"] for r in got] == [r["tokens"] for r in want]
        assert [r["train_loss"] for r in got] == pytest.approx([r["train_loss"] for r in want], abs=1e-4)
        assert [r["lr"] for r in got] == pytest.approx([r["lr"] for r in want], rel=1e-9)
    got, want = read_jsonl(killed / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [r["val_loss"] for r in got] == pytest.approx([r["val_loss"] for r in want], abs=1e-4)


# ---------------------------------------------------------------- two processes


def test_two_processes_shard_the_data_and_only_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    # ACCELERATE_USE_CPU=1 makes `--multi_gpu` start gloo processes (MULTI_CPU) on a machine without
    # GPUs; accelerate 1.15 refuses `--cpu` together with `--multi_gpu`.
    env = {**script_env(), "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    cmd = [*launch, *entry_point("hf-attn-train"), *TINY_FLAGS, "--max-steps", "30", "--eval-every", "10",
           "--save-every", "20", "--output-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_processes"] == 2
    h0, h1 = info["first_batch_hashes"]
    assert h0 != h1, "both processes got the same first batch"
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30]  # one writer: no duplicated lines
    assert records[-1]["tokens"] == 30 * 2 * 8 * 64
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.2
    assert records[-1]["train_loss"] < read_jsonl(out / "train_log.jsonl")[0]["train_loss"]
    # Only rank 0 printed the summary, and only the expected files exist (both RNG states in checkpoints).
    assert proc.stdout.count('"model_dir"') == 1
    assert sorted(p.name for p in (out / "checkpoints" / "checkpoint-20").iterdir()) == [
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl",
        "scheduler.bin", "trainer_state.json",
    ]  # fmt: skip
    assert not any(p.name.startswith("tmp-") for p in (out / "checkpoints").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # nothing written beside the run


# ---------------------------------------------------------------- errors


def test_block_size_above_max_position_embeddings(tmp_path):
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        train(tiny_args(tmp_path / "a", block_size=512, max_steps=1))


def test_tokenizer_larger_than_a_given_vocab_size(tmp_path):
    args = tiny_args(
        tmp_path / "a",
        model=dict(config_overrides="vocab_size=256"),
        max_steps=1,
        train_tokenizer_vocab=None,
        tokenizer=str(REPO / "tokenizer"),
    )
    with pytest.raises(
        ValueError, match="vocab_size: the tokenizer has 8192 tokens but the model's vocab_size is 256"
    ):
        train(args)


def test_the_tiny_preset_takes_the_tokenizer_vocabulary(tmp_path, capsys):
    """The preset's vocab_size (256) is only a default: the project's 8192-token tokenizer sizes the embedding."""
    out = tmp_path / "t"
    train_main(
        [
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--output-dir",
            str(out),
            "--max-chars",
            "50000",
            "--block-size",
            "32",
            "--batch-size",
            "4",
            "--tracker",
            "none",
            "--no-progress",
            "--sample-tokens",
            "2",
        ]
    )
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 8192
    stdout = capsys.readouterr().out  # evaluation lines, then the summary as JSON
    assert json.loads(stdout[stdout.index("{") :])["steps"] == 2


def test_unknown_config_override_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--config-overrides: 'num_kv_heads' is not an HfAttnConfig field"):
        train(tiny_args(tmp_path / "a", model=dict(config_overrides="num_kv_heads=1"), max_steps=1))


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume: .* holds no checkpoint"):
        train(tiny_args(tmp_path / "fresh", max_steps=1, resume=True))
    assert not (tmp_path / "fresh").exists()  # nothing was started


def test_missing_tokenizer_path(tmp_path):
    args = tiny_args(tmp_path / "a", max_steps=1, train_tokenizer_vocab=None, tokenizer=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="tokenizer path .* does not exist"):
        train(args)


def test_output_dir_of_another_run_is_refused_unless_overwrite(finished_run, tmp_path):
    out, _ = finished_run
    with pytest.raises(FileExistsError, match="already holds another run"):
        train(tiny_args(out, max_steps=1))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no hf_attn run; refusing to delete"):
        train(tiny_args(stranger, max_steps=1, overwrite=True))
    assert (stranger / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_previous_run(tmp_path):
    out = tmp_path / "run"
    train(tiny_args(out, max_steps=2, eval_every=1, save_every=1))
    result = train(tiny_args(out, max_steps=3, eval_every=0, log_every=0, save_every=0, overwrite=True))
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [3] and result["steps"] == 3  # 0: at the end
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == [3]
    assert not (out / "checkpoints").exists()


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate-golden"]:
        sys.exit("usage: python tests/test_training.py --regenerate-golden")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        log = golden_run(tmp)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(
        json.dumps({"steps": [r["step"] for r in log], "train_loss": [r["train_loss"] for r in log]}, indent=1) + "\n"
    )
    print(f"wrote {GOLDEN}")


def test_sample_tokens_zero_reports_the_prompt_alone(tmp_path):
    result = train(tiny_args(tmp_path / "run", max_steps=2, eval_every=0, sample_tokens=0, sample_prompt="The "))
    assert result["sample"] == "The "
