"""lm-evaluation-harness on a saved hf_attn model, offline, against hf_attn's own rolling evaluation."""

import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_attn import HfAttnConfig
from hf_attn.cli.evaluate import main as evaluate_main
from hf_attn.integrations.harness import TASK_DIR, TASK_NAME
from hf_attn.train.data import CorpusSpec, build_lm_data
from hf_attn.train.evaluation import rolling_windows

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.usefixtures("single_thread")
CORPUS = CorpusSpec(max_chars=40_000, val_fraction=0.3)  # 4 validation documents
CORPUS_FLAGS = ["--max-chars", "40000", "--val-fraction", "0.3"]
BLOCK = 32


def train_tiny_model(out_dir, attention_type: str = "gqa", steps: int = 60, corpus: CorpusSpec = CORPUS):
    """A tiny model trained for `steps` AdamW steps on packed blocks of `corpus`, saved with the project tokenizer."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained("tokenizer")
    tokenizer.model_max_length = BLOCK * 4
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    config = HfAttnConfig.from_preset("tiny", attention_type=attention_type, vocab_size=len(tokenizer),
                                      max_position_embeddings=BLOCK * 4, **special)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    blocks = build_lm_data(corpus, tokenizer, BLOCK).train["input_ids"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = blocks[torch.randint(0, len(blocks), (16,), generator=torch.Generator().manual_seed(step))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    return str(train_tiny_model(tmp_path_factory.mktemp("run") / "model"))


def test_rolling_windows_are_the_harness_windows():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    rng = random.Random(0)
    for n in (0, 1, 2, 5, 31, 32, 33, 64, 65, 100):
        for max_length in (1, 2, 7, 32):
            tokens = [rng.randrange(3, 99) for _ in range(n)]
            theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, max_length, 1)]
            # the harness feeds (context + continuation)[:-1], left-truncated to max_length
            theirs = [((ctx + cont)[:-1][-max_length:], cont) for ctx, cont in theirs]
            assert rolling_windows(tokens, 1, max_length) == theirs, (n, max_length)


def test_harness_bits_per_byte_match_rolling_evaluation(trained_dir, capsys):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    capsys.readouterr()
    evaluate_main([trained_dir, "--rolling", "--block-size", str(BLOCK), *CORPUS_FLAGS, "--json"])
    ours = json.loads(capsys.readouterr().out)  # --json prints one object
    results = simple_evaluate(
        model="hf",
        model_args=f"pretrained={trained_dir},trust_remote_code=True,max_length={BLOCK},dtype=float32",
        tasks=[TASK_NAME],
        task_manager=TaskManager(include_path=TASK_DIR, metadata={"max_chars": 40_000, "val_fraction": 0.3}),
        batch_size=8,
        device="cpu",
    )["results"][TASK_NAME]
    theirs = results["bits_per_byte,none"]
    assert ours["val_loss"] < 0.75 * math.log(len(AutoTokenizer.from_pretrained(trained_dir)))  # it did learn
    assert theirs == pytest.approx(ours["bits_per_byte"], rel=5e-3)  # the target: within 0.5%
    assert theirs == pytest.approx(ours["bits_per_byte"], rel=1e-5)  # in fact the same computation
    assert results["word_perplexity,none"] == pytest.approx(ours["word_perplexity"], rel=1e-4)
    capsys.readouterr()  # what the harness printed
    evaluate_main([trained_dir, "--block-size", str(BLOCK), *CORPUS_FLAGS, "--json"])
    packed = json.loads(capsys.readouterr().out)
    assert packed["mode"] == "packed" and packed["bits_per_byte"] != pytest.approx(theirs, rel=1e-3)
    print(
        f"bits per byte: harness {theirs:.6f}, rolling {ours['bits_per_byte']:.6f}, "
        f"packed {packed['bits_per_byte']:.6f}; val loss {ours['val_loss']:.3f} nats, {ours['eval_tokens']} tokens"
    )


def test_task_documents_from_local_files_or_a_corpus_split(tmp_path):
    from hf_attn.integrations.harness import hf_attn_rolling
    from hf_attn.train.data import load_text_splits

    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    docs = hf_attn_rolling.load_docs(eval_files=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")])
    assert docs["validation"]["text"] == ["first line\nsecond line\n", "one", "two"]
    # the harness passes --model_args along with --metadata; only CorpusSpec's fields are used
    split = hf_attn_rolling.load_docs(pretrained="runs/x", max_length=32, max_chars=40_000, val_fraction=0.3)
    assert split["validation"]["text"] == load_text_splits(CORPUS)["validation"]["text"]
