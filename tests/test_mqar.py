"""MQAR: the generator (answers recoverable, loss only on answers, seeded), the scoring, and hf-attn-mqar --quick."""

import json
import re
import subprocess

import pytest
import torch
import torch.nn.functional as F
from conftest import entry_point

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.cli.mqar import parse_mqar_args
from hf_attn.tools.comparison.mqar import (
    FILLER,
    MqarTask,
    mqar_batch,
    recall_accuracy,
    train_mqar_model,
    training_cell,
)
from hf_attn.tools.comparison.mqar_bench import mqar_config
from hf_attn.tools.comparison.stats import t_quantile_975

TASK = MqarTask(key_vocab=16, value_vocab=12)


def batch(num_pairs=4, seq_len=32, size=64, seed=0):
    return mqar_batch(TASK, num_pairs, seq_len, size, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_pairs,seq_len", [(1, 4), (4, 32), (8, 32), (16, 100)])
def test_every_answer_is_recoverable_from_its_key_earlier_in_the_sequence(num_pairs, seq_len):
    ids, labels = batch(num_pairs, seq_len)
    assert ids.shape == labels.shape == (64, seq_len)
    for row, row_labels in zip(ids.tolist(), labels.tolist()):
        keys, values = row[0 : 2 * num_pairs : 2], row[1 : 2 * num_pairs : 2]
        assert len(set(keys)) == num_pairs and all(1 <= k <= TASK.key_vocab for k in keys)
        assert all(TASK.first_value() <= v < TASK.vocab_size for v in values)
        answers = [t for t, label in enumerate(row_labels) if label != -100]
        assert len(answers) == num_pairs and min(answers) > 2 * num_pairs  # every key asked once, after the pairs
        asked = [row[t - 1] for t in answers]
        assert sorted(asked) == sorted(keys)
        for t in answers:
            assert row_labels[t] == row[t] == values[keys.index(row[t - 1])]  # the value stored with that key
        rest = set(range(2 * num_pairs, seq_len)) - set(answers) - {t - 1 for t in answers}
        assert all(row[t] == FILLER for t in rest)


def test_queries_spread_over_the_sequence():
    ids, labels = batch(2, 128, size=256)
    answers = (labels != -100).nonzero()[:, 1]
    assert answers.min() < 16 and answers.max() > 112  # near the pairs and far from them


def test_the_loss_counts_the_answers_and_nothing_else():
    config = HfAttnConfig.from_preset("tiny", vocab_size=TASK.vocab_size)
    torch.manual_seed(0)
    model = HfAttnForCausalLM(config)
    ids, labels = batch(4, 32, size=8)
    logits = model(input_ids=ids).logits
    mask = labels[:, 1:] != -100
    by_hand = F.cross_entropy(logits[:, :-1][mask], labels[:, 1:][mask])
    torch.testing.assert_close(model(input_ids=ids, labels=labels).loss, by_hand)
    other = labels.clone()
    other[labels == -100] = ids[labels == -100]  # the language-model loss on every token differs
    assert not torch.allclose(model(input_ids=ids, labels=other).loss, by_hand)


def test_the_generator_is_seeded():
    first, again, other = batch(seed=3), batch(seed=3), batch(seed=4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_cells_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="at least 36 tokens"):
        batch(9, 32)
    with pytest.raises(ValueError, match="distinct keys"):
        batch(17, 100)


def test_accuracy_counts_the_answer_predicted_one_position_before_it():
    ids, labels = batch(4, 32, size=4)
    oracle = F.one_hot(labels.clamp(min=0).roll(-1, dims=1), TASK.vocab_size).float()  # (B, T, V)
    assert recall_accuracy(oracle, labels) == (16, 16)
    late = F.one_hot(labels.clamp(min=0), TASK.vocab_size).float()  # the answer predicted one step too late
    assert recall_accuracy(late, labels)[0] == 0


def test_swa_window_is_the_benchmark_s_own():
    args = parse_mqar_args(["--window", "24", "--lengths", "32", "96"])
    assert mqar_config(args, "swa").sliding_window == 24 and mqar_config(args, "mha").sliding_window is None
    assert mqar_config(args, "performer").max_position_embeddings == 96


@pytest.fixture(scope="module")
def quick_mqar(tmp_path_factory):
    out = tmp_path_factory.mktemp("mqar") / "run"
    cmd = [*entry_point("hf-attn-mqar"), "--quick", "--no-progress", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_quick_benchmark_trains_every_design_per_seed_and_reports_it(quick_mqar):
    out, results = quick_mqar
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [("mha", 0), ("swa", 0), ("mha", 1), ("swa", 1)]
    cells = ["2x16", "4x16", "2x32", "4x32"]
    assert results["summary"]["cells"] == cells
    for r in results["runs"]:
        assert r["status"] == "ok" and set(r["accuracy"]) == set(cells)
        assert [p["step"] for p in r["curve"]] == [4, 8]
    mha, swa = results["runs"][0], results["runs"][1]
    assert swa["attention_dims"].endswith("window 8") and swa["kv_cache_bounded"]
    assert mha["kv_cache_bytes"]["32"] == 2 * mha["kv_cache_bytes"]["16"]  # full attention grows
    assert swa["kv_cache_bytes"]["32"] == swa["kv_cache_bytes"]["16"]  # the window does not
    report = (out / "report.md").read_text()
    for plot in ("accuracy.png", "learning_curves.png"):
        assert (out / plot).stat().st_size > 10_000 and f"]({plot})" in report
    assert re.search(r"Wall time: [\d,]+ s", report)


def test_report_recomputes_the_paired_interval_against_mha(quick_mqar):
    out, results = quick_mqar
    acc = {(r["variant"], r["seed"]): r["accuracy"]["4x32"] for r in results["runs"]}
    diffs = [acc[("swa", s)] - acc[("mha", s)] for s in (0, 1)]
    mean = sum(diffs) / 2
    half = t_quantile_975(1) * abs(diffs[0] - diffs[1]) / 2**0.5 / 2**0.5
    swa = next(v for v in results["summary"]["variants"] if v["variant"] == "swa")
    paired = swa["vs_mha"]["4x32"]
    assert paired["mean"] == pytest.approx(mean) and paired["half_width"] == pytest.approx(half)
    row = next(
        line for line in (out / "report.md").read_text().splitlines() if line.startswith("| swa | ") and "[" in line
    )
    assert f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]" in row
    means = {v["variant"]: v["accuracy"]["4x32"] for v in results["summary"]["variants"]}
    assert means["mha"] == pytest.approx((acc[("mha", 0)] + acc[("mha", 1)]) / 2)


def test_the_curriculum_starts_on_the_shortest_cells():
    cells = [(2, 32), (4, 32), (2, 128), (4, 128)]
    first = {training_cell(cells, step, short_steps=10) for step in range(1, 11)}
    later = {training_cell(cells, step, short_steps=10) for step in range(11, 21)}
    assert first == {(2, 32), (4, 32)} and later == set(cells)
    assert {training_cell(cells, step, short_steps=0) for step in range(1, 5)} == set(cells)


def test_muon_trains_the_decoder_matrices_and_adamw_the_rest():
    args = parse_mqar_args(["--quick", "--optimizer", "muon", "--steps", "3"])
    config = mqar_config(args, "mla")
    torch.manual_seed(0)
    model = HfAttnForCausalLM(config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_mqar_model(model, args.task, args.cells, args.train, seed=0)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved == set(before)  # every parameter trained, by one optimizer or the other
    with pytest.raises(SystemExit):
        parse_mqar_args(["--quick", "--optimizer", "sgd"])
