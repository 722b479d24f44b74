"""FSDP2 on CPU: two gloo processes under torchrun, sharded by transformers' plan for hf_attn's classes.

- the declared plan (`HfAttnForCausalLM.fsdp_plan`) passes transformers' plan checks;
- every design: 2-process FSDP2 steps equal the same steps in one process on the whole batch, and
  the consolidated weights give the same logits (`fsdp_worker.py`);
- the training command: `torchrun --nproc_per_node 2 -m hf_attn.cli.train --fsdp` equals the
  1-process run of the same global batch (losses, validation, saved model's logits); SIGKILL of one
  rank, then `--resume`, equals the uninterrupted 2-process run.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fsdp_worker import STEPS, build, steps, tokens
from test_training import TINY_FLAGS, script_env, tiny_args
from transformers import AutoModelForCausalLM
from transformers.distributed import DistributedConfig, verify_fsdp_plan

from hf_attn import ATTENTION_TYPES, HfAttnConfig, HfAttnForCausalLM
from hf_attn.train import train
from hf_attn.train.loop import latest_checkpoint
from hf_attn.utils import read_jsonl

pytestmark = pytest.mark.usefixtures("single_thread")
TESTS = Path(__file__).resolve().parent
# tiny MLA (the tiny preset: untied head), 2 micro-batches a step, checkpoints every 10 steps
RUN_FLAGS = [*TINY_FLAGS, "--attention-type", "mla", "--grad-accum", "2", "--max-steps", "30",
             "--eval-every", "10", "--save-every", "10", "--log-every", "5", "--eval-batches", "2"]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--monitor-interval", "0.1"]


def per_process_flags() -> list[str]:
    """RUN_FLAGS with --batch-size 4: two processes of 4 make the 1-process run's global batch of 8."""
    flags = list(RUN_FLAGS)
    flags[flags.index("--batch-size") + 1] = "4"
    return flags


def fsdp_command(output_dir) -> list[str]:
    return [*TORCHRUN, "-m", "hf_attn.cli.train", "--fsdp", *per_process_flags(), "--output-dir", str(output_dir)]


def launch(cmd, cwd, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# ---------------------------------------------------------------- the declared plan


@pytest.mark.parametrize("tied", [False, True])
def test_the_plan_is_declared_in_transformers_terms_and_verified(tied):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers.distributed")
    logger.addHandler(handler)
    try:
        for attention_type in ATTENTION_TYPES:
            config = HfAttnConfig.from_preset("tiny", attention_type=attention_type, tie_word_embeddings=tied)
            model = HfAttnForCausalLM(config)
            assert model.fsdp_plan == {
                "model.embed_tokens": "free_full_weight",
                "model.layers.*": "free_full_weight",
                "model.norm": "keep_full_weight",
                "lm_head": "keep_full_weight",
            }
            verify_fsdp_plan([name for name, _ in model.named_modules()], model.fsdp_plan)
            _, _, resolved = model._resolve_parallel_plans(DistributedConfig(fsdp_size=2))
            kept = {name for name, style in resolved.items() if style == "keep_full_weight"}
            # tied: transformers folds the head's rule into the embedding's (one weight, one group)
            assert kept == ({"model.norm", "model.embed_tokens"} if tied else {"model.norm", "lm_head"})
            assert {"model.layers.0", "model.layers.1"} <= {n for n, s in resolved.items() if s == "free_full_weight"}
        # no rule was unused or of an unknown strategy (verify_fsdp_plan logs its own deprecation)
        assert not [r for r in records if "not applied" in r.getMessage() or "unknown" in r.getMessage()]
        assert not [r for r in records if "match nothing" in r.getMessage()]
        verify_fsdp_plan([name for name, _ in model.named_modules()], {"model.nowhere": "free_full_weight"})
        assert [r for r in records if "not applied" in r.getMessage()]  # and its warnings are seen here
    finally:
        logger.removeHandler(handler)


# ---------------------------------------------------------------- every design, two processes


@pytest.fixture(scope="module")
def sharded_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("worker") / "results.pt"
    env = {**script_env(), "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}"}
    cmd = [*TORCHRUN, str(TESTS / "fsdp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_two_sharded_processes_equal_one_for_every_design(sharded_steps, attention_type):
    got = sharded_steps[f"{attention_type}-no"]
    model = build(attention_type)
    losses, _ = steps(model, slice(None))
    # float32: only the order of the gradient sums differs (two halves averaged by the reduce-scatter)
    assert got["losses"] == pytest.approx(losses, rel=1e-5)
    assert losses[-1] < losses[0] - 0.2  # it learns
    with torch.no_grad():
        torch.testing.assert_close(got["logits"], model(input_ids=tokens(99, 2)).logits, rtol=1e-4, atol=1e-4)
    # every parameter is a DTensor, and each process holds half of them and half of AdamW's two moments
    assert got["all_dtensor"]
    assert got["parameter_bytes"] == pytest.approx(got["full_parameter_bytes"] / 2, rel=0.02)
    assert got["optimizer_bytes"] == pytest.approx(2 * got["parameter_bytes"], rel=0.01)


def test_bf16_mixed_precision_follows_float32(sharded_steps):
    """FSDP2's policy computes in bf16 throughout (no autocast's float32 islands): the same weights give
    the float32 losses to bf16's precision; at this lr the two drift apart after a few steps, as a
    1-process model cast to bf16 does."""
    bf16, fp32 = sharded_steps["mla-bf16"], sharded_steps["mla-no"]
    assert len(bf16["losses"]) == STEPS
    assert bf16["losses"][:3] == pytest.approx(fp32["losses"][:3], abs=0.02)
    assert bf16["losses"] != fp32["losses"]  # the policy did change the compute precision
    assert bf16["losses"][2] < bf16["losses"][0] - 0.2


# ---------------------------------------------------------------- the training command


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("fsdp")
    proc = launch(fsdp_command(work / "run"), work)
    return work / "run", proc


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    train(tiny_args(out, model={"attention_type": "mla"}, grad_accum=2, max_steps=30, eval_every=10,
                    save_every=10, log_every=5, eval_batches=2))  # fmt: skip
    return out


def test_the_training_command_shards_and_equals_one_process(fsdp_run, one_process_run):
    out, proc = fsdp_run
    assert proc.stdout.count('"model_dir"') == 1
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    for name in ("train_log.jsonl", "metrics.jsonl"):
        got, want = read_jsonl(out / name), read_jsonl(one_process_run / name)
        assert [r["tokens"] for r in got] == [r["tokens"] for r in want]
        assert [r["train_loss"] for r in got] == pytest.approx([r["train_loss"] for r in want], rel=1e-5)
    got, want = read_jsonl(out / "metrics.jsonl"), read_jsonl(one_process_run / "metrics.jsonl")
    assert [r["val_loss"] for r in got] == pytest.approx([r["val_loss"] for r in want], rel=1e-5)
    assert got[-1]["val_loss"] < got[0]["val_loss"] - 0.2
    # sharded checkpoints: accelerate's state for both processes, and one DCP file per process
    ckpt = out / "checkpoints" / "checkpoint-20"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "fsdp", "random_states_0.pkl", "random_states_1.pkl", "scheduler.bin", "trainer_state.json",
    ]  # fmt: skip
    assert sorted(p.name for p in (ckpt / "fsdp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # the final save is one ordinary folder, with the same logits as the 1-process model
    assert "distributed_config" not in json.loads((out / "config.json").read_text())
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(d).eval()(input_ids=ids).logits for d in (out, one_process_run)]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=`rank` (a child of the launcher)."""
    try:
        children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def test_sigkill_of_one_rank_then_resume_equals_the_uninterrupted_run(fsdp_run, tmp_path):
    out = tmp_path / "killed"
    cmd = fsdp_command(out)
    proc = subprocess.Popen(cmd, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    # kill rank 1 as its second checkpoint is being written (or just after: either way mid-run)
    root = out / "checkpoints"
    while proc.poll() is None:  # pytest-timeout bounds a hang
        names = os.listdir(root) if root.is_dir() else []
        if "tmp-checkpoint-20" in names or "checkpoint-20" in names:
            break
        time.sleep(0.002)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None, "the run ended before rank 1 could be killed"
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0  # torchrun stops the other rank and fails
    assert not (out / "model.safetensors").exists()
    ckpt = latest_checkpoint(str(out))
    assert ckpt is not None and int(ckpt.rsplit("-", 1)[1]) < 30
    if (root / "tmp-checkpoint-20").exists():  # killed mid-save (as it is on the project's machine)
        assert ckpt.endswith("checkpoint-10")
    # what a resume would take is complete: both processes' shards and the metadata written last
    assert sorted(os.listdir(os.path.join(ckpt, "fsdp"))) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # a save cut short leaves only a temporary folder, which the resume ignores and removes
    (root / "tmp-checkpoint-999" / "fsdp").mkdir(parents=True)
    (root / "tmp-checkpoint-999" / "fsdp" / "__0_0.distcp").write_bytes(b"truncated")

    resumed = launch(cmd + ["--resume"], tmp_path)
    assert f"resuming from {ckpt}" in resumed.stderr
    assert not [n for n in os.listdir(root) if n.startswith("tmp-")]
    reference, _ = fsdp_run
    for name in ("train_log.jsonl", "metrics.jsonl"):
        got, want = read_jsonl(out / name), read_jsonl(reference / name)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        assert [r["train_loss"] for r in got] == pytest.approx([r["train_loss"] for r in want], rel=1e-5)
        assert [r["lr"] for r in got] == pytest.approx([r["lr"] for r in want], rel=1e-9)
    got, want = read_jsonl(out / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [r["val_loss"] for r in got] == pytest.approx([r["val_loss"] for r in want], rel=1e-5)


def test_a_sharded_checkpoint_is_not_resumed_without_fsdp(fsdp_run, tmp_path, capsys):
    from hf_attn.cli.train import main as train_main

    out, _ = fsdp_run
    with pytest.raises(SystemExit):
        train_main([*per_process_flags(), "--output-dir", str(out), "--resume"])
    assert "written with --fsdp" in capsys.readouterr().err


def test_fsdp_in_one_process_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "one"
    cmd = [sys.executable, "-m", "hf_attn.cli.train", "--fsdp", *per_process_flags(), "--output-dir", str(out)]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--fsdp shards over several processes" in proc.stderr and "torchrun --nproc_per_node N" in proc.stderr
    assert not out.exists()
