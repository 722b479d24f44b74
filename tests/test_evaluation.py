"""Evaluation: the batched loss loop against independent computations, the metric formulas, evaluate.py."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import DynamicCache

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.data import CorpusSpec
from hf_attn.evaluation import evaluate_loss, evaluate_model, lm_metrics
from hf_attn.report import read_jsonl
from hf_attn.training import TrainArgs, train

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]


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


def test_evaluate_script_json_agrees_with_the_training_eval(tmp_path):
    out = tmp_path / "run"
    corpus = CorpusSpec(max_chars=60_000)
    train(TrainArgs(output_dir=str(out), preset="tiny", train_tokenizer_vocab=400, corpus=corpus, block_size=32,
                    batch_size=8, max_steps=10, eval_every=10, save_every=0, tracker="none", progress=False,
                    sample_tokens=4))  # fmt: skip
    last = read_jsonl(out / "metrics.jsonl")[-1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), str(out), "--max-chars", "60000", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"val_loss", "perplexity", "bits_per_char", "bits_per_byte"} <= set(got)
    assert got["block_size"] == 32  # taken from the run's train_args.json
    assert got["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert got["perplexity"] == pytest.approx(last["perplexity"], rel=1e-5)
    assert got["bits_per_char"] == pytest.approx(last["val_bits_per_char"], rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(last["val_bits_per_byte"], rel=1e-5)


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_model(str(tmp_path / "nope"), CorpusSpec(max_chars=1000))
