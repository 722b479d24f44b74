"""--optimizer muon and --lr-schedule: the parameter groups of every design, exact resume, the
schedule's shape, gradient accumulation, several processes and the refusals (hf_attn.train.optim)."""

import copy
import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import entry_point
from test_training import TINY_FLAGS, script_env, tiny_args

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.model.configuration_hf_attn import ATTENTION_TYPES
from hf_attn.train import TrainOptions, train
from hf_attn.train.optim import MuonWithAdamW, make_optimizer, make_schedule, muon_groups
from hf_attn.utils import read_jsonl

pytestmark = pytest.mark.usefixtures("single_thread")
MUON = dict(optimizer="muon", muon_lr=0.02)


def tiny_model(attention_type: str, **overrides) -> HfAttnForCausalLM:
    torch.manual_seed(0)
    return HfAttnForCausalLM(HfAttnConfig.from_preset("tiny", attention_type=attention_type, **overrides))


# ---------------------------------------------------------------- groups


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_muon_takes_the_decoder_matrices_and_adamw_the_rest(attention_type):
    model = tiny_model(attention_type)
    muon, adamw = muon_groups(model)
    muon_names, adamw_names = {n for n, _ in muon}, {n for n, _ in adamw}
    assert muon_names.isdisjoint(adamw_names)
    assert muon_names | adamw_names == {n for n, _ in model.named_parameters()}
    assert all(p.ndim == 2 and n.startswith("model.layers.") for n, p in muon)
    # embeddings, head and every norm stay on AdamW
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= adamw_names
    assert all(n.endswith("norm.weight") for n in adamw_names if n.startswith("model.layers."))
    expected = {"o_proj", "gate_proj", "up_proj", "down_proj"}
    if attention_type == "mla":  # the low-rank factors (the tiny preset has no q_lora_rank: q_proj)
        expected |= {"q_proj", "kv_a_proj_with_mqa", "kv_b_proj"}
    else:
        expected |= {"q_proj", "k_proj", "v_proj"}
    for layer in range(model.config.num_hidden_layers):
        got = {n.split(".")[-2] for n in muon_names if n.startswith(f"model.layers.{layer}.")}
        assert got == expected
    buffers = {id(b) for b in model.buffers()}  # the Performer's random features: in no group
    assert all(id(p) not in buffers for _, p in muon + adamw)
    optimizer = make_optimizer(model, TrainOptions(**MUON))
    assert isinstance(optimizer, MuonWithAdamW)
    assert isinstance(optimizer.muon, torch.optim.Muon) and isinstance(optimizer.adamw, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3, 0.02]


def test_mla_with_a_query_latent_puts_both_query_factors_on_muon():
    model = tiny_model("mla", q_lora_rank=32)
    muon = {n.split(".")[-2] for n, _ in muon_groups(model)[0]}
    assert {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"} <= muon
    assert "q_a_layernorm" not in muon


def test_adamw_is_the_default_and_keeps_its_two_groups():
    model = tiny_model("mha")
    optimizer = make_optimizer(model, TrainOptions())
    assert type(optimizer) is torch.optim.AdamW
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_muon_lowers_the_loss_of_every_design(attention_type):
    model = tiny_model(attention_type)
    optimizer = make_optimizer(model, TrainOptions(**MUON, lr=3e-3))
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_state_dict_round_trip_continues_exactly():
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))

    def steps(model, optimizer, n):
        for _ in range(n):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    a = tiny_model("mla")
    opt_a = make_optimizer(a, TrainOptions(**MUON))
    steps(a, opt_a, 3)
    b = tiny_model("mla")
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer(b, TrainOptions(**MUON))
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from disk: no tensor shared with opt_a
    assert len(opt_b.muon.state) == len(opt_b.muon.param_groups[0]["params"])  # momentum buffers restored
    steps(a, opt_a, 3)
    steps(b, opt_b, 3)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    # the composite's groups are the inner optimizers' groups after a load (a scheduler sets them)
    opt_b.param_groups[-1]["lr"] = 0.5
    assert opt_b.muon.param_groups[0]["lr"] == 0.5


# ---------------------------------------------------------------- schedule


def test_wsd_warms_up_holds_then_decays_linearly_for_each_groups_own_rate():
    model = tiny_model("mha")
    args = TrainOptions(**MUON, lr=1e-3, lr_schedule="wsd", warmup_steps=4, decay_fraction=0.3, min_lr_ratio=0.1)
    optimizer = make_optimizer(model, args)
    schedule = make_schedule(optimizer, args, max_steps=20)
    factors = []
    for _ in range(20):
        lrs = schedule.get_last_lr()
        assert lrs[-1] / 0.02 == pytest.approx(lrs[0] / 1e-3)  # Muon's and AdamW's rates move together
        factors.append(lrs[0] / 1e-3)
        optimizer.step()
        schedule.step()
    assert factors[:5] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])  # transformers' warm-up starts at min
    assert factors[4:14] == [1.0] * 10  # stable: 20 - 4 - 6 steps
    decay = factors[14:]
    assert decay == pytest.approx([1 - 0.9 * k / 6 for k in range(6)])
    assert schedule.get_last_lr()[0] == pytest.approx(1e-4)  # ends at lr * min_lr_ratio


def test_cosine_is_still_the_default_schedule():
    model = tiny_model("mha")
    args = TrainOptions(warmup_steps=2, min_lr_ratio=0.1)
    optimizer = make_optimizer(model, args)
    schedule = make_schedule(optimizer, args, max_steps=10)
    factors = []
    for _ in range(10):
        factors.append(schedule.get_last_lr()[0] / 1e-3)
        optimizer.step()
        schedule.step()
    assert factors[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))  # decaying, no stable phase


# ---------------------------------------------------------------- options


def test_muon_under_fsdp_is_refused_in_one_line():
    with pytest.raises(ValueError, match="--optimizer muon with --fsdp") as info:
        TrainOptions(optimizer="muon", fsdp=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [("muon_lr", 0.0, "above 0"), ("muon_momentum", 1.0, "below 1"), ("decay_fraction", 0.0, "above 0")],
)
def test_bad_muon_and_schedule_values_name_the_flag(field, value, rule):
    with pytest.raises(ValueError, match=rule):
        TrainOptions(**{field: value})


# ---------------------------------------------------------------- the loop


def test_resume_with_muon_continues_exactly(tmp_path):
    kw = dict(**MUON, lr_schedule="wsd", max_steps=12, eval_every=6, log_every=1, save_every=6)
    whole = tmp_path / "whole"
    train(tiny_args(whole, **kw))
    ckpt = whole / "checkpoints" / "checkpoint-6"
    state = torch.load(ckpt / "optimizer.bin", weights_only=True)
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]  # Muon's momentum is in the checkpoint

    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    shutil.rmtree(resumed / "checkpoints")
    shutil.copytree(ckpt, resumed / "checkpoints" / "checkpoint-6")
    train(tiny_args(resumed, **kw, resume=True))
    want, got = read_jsonl(whole / "train_log.jsonl"), read_jsonl(resumed / "train_log.jsonl")
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in want]  # bit for bit
    untimed = lambda records: [{k: v for k, v in r.items() if k not in ("elapsed_s", "step_time_s")} for r in records]  # noqa: E731
    assert untimed(read_jsonl(resumed / "metrics.jsonl")) == untimed(read_jsonl(whole / "metrics.jsonl"))

    # The test can fail: the same resume with Muon's momentum zeroed in the checkpoint drifts.
    zeroed = tmp_path / "zeroed"
    shutil.copytree(resumed, zeroed, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    shutil.rmtree(zeroed / "checkpoints")
    shutil.copytree(ckpt, zeroed / "checkpoints" / "checkpoint-6")
    for buffers in state["muon"]["state"].values():
        buffers["momentum_buffer"].zero_()
    torch.save(state, zeroed / "checkpoints" / "checkpoint-6" / "optimizer.bin")
    train(tiny_args(zeroed, **kw, resume=True))
    drifted = [r["train_loss"] for r in read_jsonl(zeroed / "train_log.jsonl")]
    assert drifted[6:] != [r["train_loss"] for r in want][6:]


def test_resume_with_another_optimizer_is_refused(tmp_path):
    out = tmp_path / "run"
    train(tiny_args(out, max_steps=4, save_every=2, eval_every=0))
    with pytest.raises(Exception, match="--optimizer 'adamw', this command gives 'muon'"):
        train(tiny_args(out, **MUON, max_steps=4, save_every=2, eval_every=0, resume=True))


def test_grad_accum_with_muon_equals_one_big_batch(tmp_path):
    common = dict(**MUON, max_steps=5, eval_every=0, log_every=1, save_every=0)
    train(tiny_args(tmp_path / "accum", **{**common, "batch_size": 4, "grad_accum": 2}))
    train(tiny_args(tmp_path / "big", **{**common, "batch_size": 8}))
    accum = [r["train_loss"] for r in read_jsonl(tmp_path / "accum" / "train_log.jsonl")]
    big = [r["train_loss"] for r in read_jsonl(tmp_path / "big" / "train_log.jsonl")]
    assert accum == pytest.approx(big, abs=2e-3)
    assert big[-1] < big[0] - 0.05


def test_bf16_mixed_precision_with_muon_learns(tmp_path):
    # its own process: accelerate's state (mixed precision) is set once per process
    out = tmp_path / "bf16"
    flags = [*TINY_FLAGS, "--optimizer", "muon", "--mixed-precision", "bf16", "--max-steps", "20",
             "--eval-every", "0", "--save-every", "0", "--output-dir", str(out)]  # fmt: skip
    proc = subprocess.run([*entry_point("hf-attn-train"), *flags], env=script_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_jsonl(out / "train_log.jsonl")
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.5
    assert read_jsonl(out / "metrics.jsonl")[-1]["val_loss"] < 6.0


def test_two_processes_with_muon_equal_one_process_with_their_batch(tmp_path):
    env = {**script_env(), "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    flags = [*TINY_FLAGS, "--optimizer", "muon", "--max-steps", "6", "--eval-every", "0", "--log-every", "1",
             "--save-every", "0"]  # fmt: skip
    two = subprocess.run(
        [*launch, *entry_point("hf-attn-train"), *flags, "--batch-size", "4", "--output-dir", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-4000:]
    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["num_processes"] == 2
    train(tiny_args(tmp_path / "one", **MUON, max_steps=6, eval_every=0, log_every=1, save_every=0))
    got = [r["train_loss"] for r in read_jsonl(tmp_path / "two" / "train_log.jsonl")]
    want = [r["train_loss"] for r in read_jsonl(tmp_path / "one" / "train_log.jsonl")]
    assert got == pytest.approx(want, abs=2e-3)
