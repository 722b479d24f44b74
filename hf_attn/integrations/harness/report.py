"""One saved model scored three ways on the same validation split, for docs/integrations/:

packed blocks (hf-attn-evaluate, the training evaluation), rolling windows (hf-attn-evaluate
--rolling) and lm-evaluation-harness's `hf_attn_rolling` task through its own command line
(`lm-eval run`, in a subprocess, as a user would run it).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from ...train.data import CorpusSpec
from ...train.evaluation import evaluate_model
from ...utils import environment, markdown_table
from . import TASK_DIR, TASK_NAME


def run_corpus(model_dir: str) -> CorpusSpec | None:
    """The corpus a training run used, from its `train_args.json` (None if the folder has none)."""
    path = os.path.join(model_dir, "train_args.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        corpus = json.load(f).get("corpus") or {}
    fields = {f.name for f in dataclasses.fields(CorpusSpec)}
    return CorpusSpec(**{k: v for k, v in corpus.items() if k in fields})


def harness_command(model_dir: str, corpus: CorpusSpec, max_length: int, batch_size: int, output_path: str) -> list:
    """`lm-eval run` on the hf_attn_rolling task, the corpus passed as --metadata (CorpusSpec fields)."""
    metadata = {k: v for k, v in dataclasses.asdict(corpus).items() if v != getattr(CorpusSpec(), k)}
    model_args = f"pretrained={model_dir},trust_remote_code=True,max_length={max_length},dtype=float32"
    return ["lm-eval", "run", "--model", "hf", "--model_args", model_args, "--include_path", TASK_DIR,
            "--tasks", TASK_NAME, "--metadata", json.dumps(metadata), "--batch_size", str(batch_size),
            "--device", "cpu", "--output_path", output_path]  # fmt: skip


def harness_report(model_dir: str, out_dir: str, corpus: CorpusSpec | None = None, batch_size: int = 8) -> dict:
    """Score `model_dir` packed, rolling and with the harness; write report.md and results.json to `out_dir`."""
    corpus = corpus or run_corpus(model_dir) or CorpusSpec()
    os.makedirs(out_dir, exist_ok=True)
    results, seconds = {}, {}
    for mode in ("packed", "rolling"):
        start = time.perf_counter()
        results[mode] = evaluate_model(model_dir, corpus, batch_size=batch_size, rolling=mode == "rolling")
        seconds[mode] = time.perf_counter() - start
    block = results["packed"]["block_size"]
    with tempfile.TemporaryDirectory() as lm_eval_out:  # its raw output names local paths; keep only the numbers
        command = harness_command(model_dir, corpus, block, batch_size, lm_eval_out)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lm_eval", *command[1:]], check=True)
        seconds["harness"] = time.perf_counter() - start
        (results_file,) = glob.glob(os.path.join(lm_eval_out, "**", "results_*.json"), recursive=True)
        with open(results_file) as f:
            harness = json.load(f)["results"][TASK_NAME]
    command = command[: command.index("--output_path")]
    results["harness"] = {"bits_per_byte": harness["bits_per_byte,none"],
                          "word_perplexity": harness["word_perplexity,none"],
                          "byte_perplexity": harness["byte_perplexity,none"]}  # fmt: skip
    shown = ['"$(python -m hf_attn.integrations.harness)"' if part == TASK_DIR else part for part in command]
    summary = {"model_dir": model_dir, "corpus": dataclasses.asdict(corpus), "block_size": block, "results": results,
               "seconds": seconds, "lm_eval_command": shown, "environment": environment()}  # fmt: skip
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(_markdown(summary))
    return summary


def _markdown(summary: dict) -> str:
    r = summary["results"]
    rows = [
        ["packed blocks (hf-attn-evaluate)", r["packed"]["eval_tokens"], r["packed"]["val_loss"],
         r["packed"]["bits_per_char"], r["packed"]["bits_per_byte"], None, summary["seconds"]["packed"]],
        ["rolling windows (hf-attn-evaluate --rolling)", r["rolling"]["eval_tokens"], r["rolling"]["val_loss"],
         r["rolling"]["bits_per_char"], r["rolling"]["bits_per_byte"], r["rolling"]["word_perplexity"],
         summary["seconds"]["rolling"]],
        ["lm-eval hf_attn_rolling", None, None, None, r["harness"]["bits_per_byte"], r["harness"]["word_perplexity"],
         summary["seconds"]["harness"]],
    ]  # fmt: skip
    table = markdown_table(["scoring", "tokens scored", "nats/token", "bits/char", "bits/byte", "word ppl", "s"],
                           [[f"{v:.6f}" if isinstance(v, float) and i in (2, 3, 4) else v for i, v in enumerate(row)]
                            for row in rows], align="lrrrrrr")  # fmt: skip
    rel = lambda a, b: f"{100 * (a - b) / b:+.4f}%"
    return "\n".join([
        "# Packed, rolling and lm-evaluation-harness scores of one model",
        "",
        f"Model: `{summary['model_dir']}`; window/block {summary['block_size']} tokens; corpus {summary['corpus']}.",
        f"Written by `python scripts/eval_harness.py {summary['model_dir']}`.",
        "",
        table,
        "",
        f"- harness vs rolling bits/byte: {rel(r['harness']['bits_per_byte'], r['rolling']['bits_per_byte'])}",
        f"- packed vs rolling bits/byte: {rel(r['packed']['bits_per_byte'], r['rolling']['bits_per_byte'])}",
        "",
        "lm-eval command:",
        "",
        "```",
        " ".join(part if part.startswith(("'", '"')) or " " not in part else f"'{part}'"
                 for part in summary["lm_eval_command"]),
        "```",
        "",
    ])  # fmt: skip
