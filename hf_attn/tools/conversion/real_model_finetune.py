"""The real-model experiment's fine-tune: the source and a conversion trained alike with `--init-from`.

Both start from the folders `scripts/smollm2_experiment.py` keeps (the imported source, and the
recovered conversion) and train on the default corpus's first `finetune_tokens` train tokens with the
same schedule. The source is fine-tuned too, as the control: SmolLM2 was not trained on the default
corpus, so part of what a conversion gains from the fine-tune is the corpus itself, and only the
source trained the same way separates that from what the fine-tune repairs.

The loop's own evaluation (`eval_batches` x `batch_size` blocks of 256 tokens of the validation split)
is the experiment's validation set when `eval_batches * batch_size == eval_blocks`, so the curve and the
report's table are one measurement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ...loading import load_model_and_tokenizer
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...train.loop import train
from ...train.options import ModelOptions, TrainArgs
from ...utils import read_jsonl
from ..comparison.plots import save_line_plot
from .importing import import_model
from .real_model import Bench, RealModelOptions, measured, save


@dataclass
class FinetuneStageOptions:
    """The full fine-tune of the real-model experiment."""

    finetune_tokens: int = field(default=65_536, metadata={"help": "train-split tokens per fine-tune; 0: skip"})
    finetune_models: list[str] = field(
        default_factory=lambda: ["source", "0.5"],
        metadata={"help": "'source' and the cache fractions whose recovered conversions are fine-tuned"},
    )
    finetune_lr: float = field(default=5e-5, metadata={"help": "peak learning rate (cosine to a tenth)"})
    finetune_batch_size: int = field(default=8, metadata={"help": "blocks of 256 tokens per step"})
    finetune_eval_every: int = field(default=8, metadata={"help": "steps between validation points of the curve"})


def finetune_args(stage: FinetuneStageOptions, folder: str, out: str, eval_blocks: int) -> TrainArgs:
    steps = max(1, stage.finetune_tokens // (256 * stage.finetune_batch_size))
    return TrainArgs(
        output_dir=out,
        model=ModelOptions(init_from=folder),
        block_size=256,
        batch_size=stage.finetune_batch_size,
        lr=stage.finetune_lr,
        warmup_steps=max(1, steps // 8),
        weight_decay=0.0,
        max_tokens=stage.finetune_tokens,
        eval_every=stage.finetune_eval_every,
        eval_on_start=True,
        eval_batches=max(1, eval_blocks // stage.finetune_batch_size),
        save_every=10**9,
        sample_tokens=16,
        overwrite=True,
    )


def source_folder(source: str, keep_dir: str) -> str:
    """The imported `source` saved as an hf_attn folder in `keep_dir` (once), for `--init-from` and timing."""
    folder = os.path.join(keep_dir, "source")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        model, tokenizer = import_model(source)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def finetune_one(bench: Bench, options: RealModelOptions, stage: FinetuneStageOptions, name: str, keep_dir: str):
    """Fine-tune one model; its curve (tokens, validation perplexity), final scores, time and memory."""
    if name == "source":
        folder = source_folder(options.source, keep_dir)
    else:
        folder = os.path.join(keep_dir, f"mla-{float(name)}")
    out = os.path.join(keep_dir, f"finetune-{name}")
    summary, cost = measured(train, finetune_args(stage, folder, out, options.eval_blocks))
    curve = [
        {"tokens": r["tokens"], "step": r["step"], "perplexity": r["perplexity"]}
        for r in read_jsonl(os.path.join(out, "metrics.jsonl"))
    ]
    model, _ = load_model_and_tokenizer(out, HfAttnForCausalLM)
    return {
        "name": name,
        "curve": curve,
        "scores": bench.scores(model),
        "train_tokens_per_s": summary.get("train_tokens_per_s"),
        **cost,
    }


def run_finetune_stage(bench: Bench, options: RealModelOptions, stage: FinetuneStageOptions, results: dict, keep_dir):
    """Each of `finetune_models` fine-tuned; results["finetune"] after each."""
    results["finetune"] = {"options": vars(stage).copy(), "runs": []}
    for name in stage.finetune_models:
        results["finetune"]["runs"].append(finetune_one(bench, options, stage, name, keep_dir))
        save(options, results)
    return results["finetune"]


def _before(results: dict, name: str) -> tuple[str, dict]:
    if name == "source":
        return "source (GQA)", results["source"]["scores"]
    run = next(r for r in results["runs"] if r["fraction"] == float(name))
    return f"MLA {float(name):g} of the cache, recovered", run["recovered"]


def finetune_lines(results: dict) -> list[str]:
    """The fine-tune table (each model's scores before and after), and each conversion against the source
    fine-tuned alike: the gap the fine-tune leaves, on the corpus it trained on and on the second text."""
    runs = results["finetune"]["runs"]
    names = list(results["source"]["scores"])
    head = " | ".join(f"ppl {n} before | after" for n in names)
    lines = [
        f"| model | {head} | train time, tokens/s, peak memory |",
        "|---" + "|---:" * (2 * len(names) + 1) + "|",
    ]
    for run in runs:
        label, before = _before(results, run["name"])
        cells = " | ".join(f"{before[n]['perplexity']:.2f} | {run['scores'][n]['perplexity']:.2f}" for n in names)
        speed = run.get("train_tokens_per_s") or 0
        lines.append(f"| {label} | {cells} | {run['seconds']:.0f} s, {speed:.0f}, {run['peak_rss_mib']} MiB |")
    lines += ["", "Wall times are the shared 2-core machine's: other jobs ran beside some of these runs, so the"
              " times and tokens/s measure the load as much as the model."]  # fmt: skip
    source = next((r for r in runs if r["name"] == "source"), None)
    for run in runs:
        if source is None or run is source:
            continue
        gaps = ", ".join(
            f"{n} {run['scores'][n]['perplexity']:.2f} vs {source['scores'][n]['perplexity']:.2f} "
            f"({100 * (run['scores'][n]['perplexity'] / source['scores'][n]['perplexity'] - 1):+.1f}%)"
            for n in names
        )
        lines.append(f"\n- {_before(results, run['name'])[0]}, fine-tuned, against the source tuned alike: {gaps}")
    return lines


def plot_finetune(results: dict, path: str) -> str:
    """Validation perplexity against fine-tune tokens, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in results["finetune"]["runs"]:
        label = "source (GQA)" if run["name"] == "source" else f"MLA {float(run['name']):g} cache"
        ax.plot([p["tokens"] for p in run["curve"]], [p["perplexity"] for p in run["curve"]], marker="o", label=label)
    title = "SmolLM2-135M: full fine-tune with --init-from"
    save_line_plot(fig, ax, path, "fine-tune tokens", "validation perplexity (default corpus)", title)
    return path
