"""The comparison's probes on tiny models: loss by position buckets, and the copy probe."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.tools.comparison.plots import plot_position_loss
from hf_attn.tools.comparison.probes import (
    copy_distances,
    copy_probe,
    position_edges,
    position_losses,
    probe_model,
    random_segments,
    token_losses,
)
from hf_attn.tools.comparison.stats import axes_vs_reference, axis_verdict

VOCAB = 50


class Copier:
    """A fake model that knows the copy distance d: from position d - 1 on, it predicts the token d - 1
    positions back (the next token of a repeated segment) with certainty; before that, uniform."""

    training = False

    def __init__(self, d):
        self.d = d

    def eval(self):
        pass

    def __call__(self, input_ids):
        logits = torch.zeros(*input_ids.shape, VOCAB)  # (B, T, V): uniform
        t = torch.arange(self.d - 1, input_ids.shape[1])
        logits[:, t] = F.one_hot(input_ids[:, t - self.d + 1], VOCAB).float() * 100
        return SimpleNamespace(logits=logits)


def test_bucket_edges_scale_with_the_block():
    assert position_edges(512) == (0, 32, 128, 512)
    assert position_edges(32) == (0, 2, 8, 32)
    assert copy_distances(512) == (64, 256) and copy_distances(32) == (4, 16)


def test_position_buckets_average_the_right_columns():
    nll = torch.arange(2 * 15, dtype=torch.float).reshape(2, 15)  # 2 blocks of 16 tokens: predicted positions 1..15
    buckets = position_losses(nll, (0, 4, 16))
    first = nll[:, :3].mean().item()  # positions 1, 2, 3
    last = nll[:, 3:].mean().item()  # positions 4..15
    assert [(b["from"], b["to"]) for b in buckets] == [(0, 4), (4, 16)]
    assert buckets[0]["loss"] == pytest.approx(first) and buckets[1]["loss"] == pytest.approx(last)
    assert [b["tokens"] for b in buckets] == [6, 24]


def test_token_losses_match_the_model_loss():
    torch.manual_seed(0)
    model = HfAttnForCausalLM(HfAttnConfig.from_preset("tiny", vocab_size=VOCAB))
    blocks = torch.randint(0, VOCAB, (5, 24))
    nll = token_losses(model, blocks, batch_size=2)
    assert nll.shape == (5, 23)
    torch.testing.assert_close(nll.mean(), model(input_ids=blocks, labels=blocks).loss)
    buckets = position_losses(nll, position_edges(24))
    weighted = sum(b["loss"] * b["tokens"] for b in buckets) / sum(b["tokens"] for b in buckets)
    assert weighted == pytest.approx(nll.mean().item(), rel=1e-5)


def test_copy_probe_scores_the_second_copy_against_the_first():
    blocks = torch.randint(0, VOCAB, (3, 32))
    (probe,) = copy_probe(Copier(8), blocks, (8,))
    assert probe["distance"] == 8
    assert probe["first_copy_loss"] == pytest.approx(math.log(VOCAB), rel=1e-4)  # uniform on the first copy
    assert probe["second_copy_loss"] < 1e-3 and probe["ratio"] < 1e-3  # certain on the second
    (wrong,) = copy_probe(Copier(8), blocks, (6,))  # copying from 8 back is wrong at distance 6
    assert wrong["second_copy_loss"] > 10
    with pytest.raises(ValueError, match="at least 34 tokens"):
        copy_probe(Copier(8), blocks, (17,))


def test_probes_on_a_tiny_model_and_their_plot(tmp_path):
    torch.manual_seed(0)
    model = HfAttnForCausalLM(HfAttnConfig.from_preset("tiny", vocab_size=VOCAB))
    probes = probe_model(model, torch.randint(0, VOCAB, (4, 32)), 32, batch_size=4)
    assert [(b["from"], b["to"]) for b in probes["position_loss"]] == [(0, 2), (2, 8), (8, 32)]
    assert [c["distance"] for c in probes["copy"]] == [c["distance"] for c in probes["copy_passage"]] == [4, 16]
    untrained = math.log(VOCAB)  # an untrained model is near uniform everywhere
    assert all(abs(b["loss"] - untrained) < 0.5 for b in probes["position_loss"])
    variants = [
        {"variant": "mha", "status": "ok", "position_loss": probes["position_loss"]},
        {"variant": "gone", "status": "failed"},
    ]
    drawn = plot_position_loss(str(tmp_path / "p.png"), variants)
    assert drawn == {"mha": [b["loss"] for b in probes["position_loss"]]}
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_axis_verdicts_know_which_way_is_better():
    below = {"low": -2.0, "high": -1.0}
    assert axis_verdict(below, "lower") == "better than MHA" and axis_verdict(below, "higher") == "worse than MHA"
    assert axis_verdict({"low": -1.0, "high": 1.0}, "lower") == "within the seed spread"
    assert axis_verdict({"low": None, "high": None}, "lower") == "one seed: no interval"
    runs = [
        {"variant": v, "seed": s, "status": "ok", "far_position_loss": loss}
        for v, s, loss in [
            ("mha", 0, 3.0),
            ("mha", 1, 3.2),
            ("mha", 2, 3.1),
            ("swa", 0, 3.5),
            ("swa", 1, 3.6),
            ("swa", 2, 3.6),
        ]
    ]
    axes = axes_vs_reference(runs, "swa")
    assert set(axes) == {"far_position_loss"}  # axes the runs did not record are left out
    far = axes["far_position_loss"]
    assert far["mean"] == pytest.approx(3.5667, abs=1e-4) and far["paired_vs_mha"]["mean"] == pytest.approx(
        0.4667, abs=1e-4
    )
    assert far["paired_vs_mha"]["verdict"] == "worse than MHA"  # differences 0.5, 0.4, 0.5: interval above 0


def test_random_segments_use_the_blocks_tokens_seeded():
    blocks = torch.tensor([[3, 5, 7, 9] * 8, [11, 3, 5, 13] * 8])
    drawn = random_segments(blocks)
    assert drawn.shape == blocks.shape and set(drawn.unique().tolist()) <= {3, 5, 7, 9, 11, 13}
    assert torch.equal(drawn, random_segments(blocks)) and not torch.equal(drawn, random_segments(blocks, seed=1))
    assert len(drawn.unique()) > 3  # drawn across the whole set, not copied from the blocks
