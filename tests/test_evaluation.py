"""Evaluation: the loss loops against independent computations, the metric formulas, hf-attn-evaluate."""

import json
import math

import evaluate
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import DynamicCache

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.cli.evaluate import main as evaluate_main
from hf_attn.cli.train import main as train_main
from hf_attn.train.data import CorpusSpec
from hf_attn.train.evaluation import evaluate_loss, evaluate_model, evaluate_rolling, lm_metrics
from hf_attn.train.metrics import LM_PERPLEXITY_METRIC
from hf_attn.utils import read_jsonl

pytestmark = pytest.mark.usefixtures("single_thread")


def token_by_token_nll(model, block: torch.Tensor) -> float:
    """Sum of -log p(x_t | x_<t) for t >= 1, one token at a time through the KV cache."""
    cache = DynamicCache(config=model.config)
    total = 0.0
    for t in range(block.numel() - 1):
        logits = model(input_ids=block[t : t + 1].view(1, 1), cache=cache, use_cache=True).logits  # (1, 1, V)
        total -= torch.log_softmax(logits[0, -1].double(), dim=-1)[block[t + 1]].item()
    return total


@pytest.mark.parametrize("attention_type", ["gqa", "mla"])
def test_loss_loop_matches_token_by_token_and_the_models_own_loss(attention_type):
    torch.manual_seed(0)
    config = HfAttnConfig.from_preset("tiny", attention_type=attention_type)
    model = HfAttnForCausalLM(config).eval()
    blocks = torch.randint(0, config.vocab_size, (5, 12))
    loader = DataLoader([{"input_ids": b} for b in blocks], batch_size=2)  # a short last batch too
    mean_loss, tokens = evaluate_loss(model, loader)
    assert tokens == 5 * 11  # the first token of each block is not predicted
    independent = sum(token_by_token_nll(model, b) for b in blocks) / tokens
    assert mean_loss == pytest.approx(independent, rel=1e-5)
    with torch.no_grad():
        own = model(input_ids=blocks, labels=blocks).loss.item()  # labels shifted inside
    assert mean_loss == pytest.approx(own, rel=1e-5)
    # max_batches evaluates a prefix
    first, n = evaluate_loss(model, loader, max_batches=1)
    assert n == 2 * 11 and first == pytest.approx(sum(token_by_token_nll(model, b) for b in blocks[:2]) / n, rel=1e-5)


def test_metric_formulas():
    stats = {"tokens": 300, "chars": 1200, "bytes": 1500}
    m = lm_metrics(2.0, stats)
    assert m["val_loss"] == 2.0
    assert m["perplexity"] == pytest.approx(math.exp(2.0))
    assert m["bits_per_char"] == pytest.approx(2.0 * 300 / 1200 / math.log(2))
    assert m["bits_per_byte"] == pytest.approx(2.0 * 300 / 1500 / math.log(2))


def test_rolling_loop_matches_one_forward_per_token(byte_tokenizer):
    """Each document scored whole under the harness's rule, recomputed one token at a time."""
    torch.manual_seed(0)
    config = HfAttnConfig.from_preset("tiny", attention_type="mla", vocab_size=len(byte_tokenizer))
    model = HfAttnForCausalLM(config).eval()
    texts = ["In the beginning", "x", "and the earth was without form, and void; and darkness"]
    window = 8
    nll, counts = evaluate_rolling(model, byte_tokenizer, texts, max_length=window, batch_size=3)
    for text, got, n in zip(texts, nll, counts):
        ids = byte_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert n == len(ids)  # every token scored, no EOS
        expected = 0.0
        for t in range(len(ids)):
            start = t - t % window  # windows predict ids[start : start + window]
            end = min(start + window, len(ids))
            context = [byte_tokenizer.eos_token_id, *ids[:t]] if start == 0 else ids[max(0, end - window - 1) : t]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([context])).logits[0, -1].double()
            expected -= torch.log_softmax(logits, dim=-1)[ids[t]].item()
        assert got == pytest.approx(expected, rel=1e-6)


def test_metric_module_loads_offline_and_matches_the_formulas(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(LM_PERPLEXITY_METRIC)
    metric.add_batch(nll=[10.0, 30.0], tokens=[15, 5])
    got = metric.compute(chars=90, bytes=100)
    assert got["val_loss"] == pytest.approx(2.0) and got["scored_tokens"] == 20
    assert got["bits_per_byte"] == pytest.approx(40.0 / 100 / math.log(2))
    assert got["bits_per_char"] == pytest.approx(40.0 / 90 / math.log(2))
    sampled = metric.compute(nll=[20.0], tokens=[10], chars=90, bytes=100, text_tokens=50)  # a sample of 50 tokens
    assert sampled == {**lm_metrics(2.0, {"tokens": 50, "chars": 90, "bytes": 100}), "scored_tokens": 10}


def test_evaluate_command_agrees_with_the_training_eval(tmp_path, capsys):
    out = tmp_path / "run"
    train_main(["--output-dir", str(out), "--preset", "tiny", "--train-tokenizer-vocab", "400", "--max-chars", "60000",
                "--block-size", "32", "--batch-size", "8", "--max-steps", "10", "--eval-every", "10",
                "--save-every", "0", "--tracker", "none", "--progress", "false", "--sample-tokens", "4"])  # fmt: skip
    last = read_jsonl(out / "metrics.jsonl")[-1]
    capsys.readouterr()  # what training printed
    evaluate_main([str(out), "--max-chars", "60000", "--json"])
    got = json.loads(capsys.readouterr().out)  # --json prints one object
    assert {"val_loss", "perplexity", "bits_per_char", "bits_per_byte"} <= set(got)
    assert got["block_size"] == 32  # taken from the run's train_args.json
    assert got["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert got["perplexity"] == pytest.approx(last["perplexity"], rel=1e-5)
    assert got["bits_per_char"] == pytest.approx(last["val_bits_per_char"], rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(last["val_bits_per_byte"], rel=1e-5)
    evaluate_main([str(out), "--max-chars", "60000", "--rolling", "--json"])
    rolling = json.loads(capsys.readouterr().out)
    assert rolling["mode"] == "rolling" and rolling["block_size"] == 32
    assert rolling["bits_per_byte"] == pytest.approx(got["bits_per_byte"], rel=0.05)  # same model, other context rule


def test_evaluate_command_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([])
    assert exit_info.value.code == 2 and "error: give the model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main([str(tmp_path / "nope")])
    assert "does not exist" in capsys.readouterr().err


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_model(str(tmp_path / "nope"), CorpusSpec(max_chars=1000))
