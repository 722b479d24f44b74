"""The human-readable outputs of a training run: report.md and loss.png.

Both are written from the run's own records (metrics.jsonl: one record per evaluation;
train_log.jsonl: one record per logging interval), so the numbers in them are the logged ones.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt  # noqa: E402

from ..utils import markdown_table  # noqa: E402


def plot_losses(path: str, evals: list[dict], train_log: list[dict]) -> None:
    """Train and validation loss against steps and against tokens, and seconds per step."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, x in zip(axes[:2], ("step", "tokens")):
        ax.plot([r[x] for r in train_log], [r["train_loss"] for r in train_log], label="train", alpha=0.7)
        ax.plot([r[x] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
        ax.set_xlabel(x)
        ax.set_ylabel("loss (nats/token)")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot([r["step"] for r in train_log], [r["step_time_s"] for r in train_log])
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("seconds per optimizer step")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(path: str, summary: dict, model_config: dict, train_args: dict, sample: str) -> None:
    """report.md: final metrics, cost, model config, training arguments and a generated sample."""
    final = summary["history"][-1] if summary["history"] else {}
    metric_rows = [
        ("validation loss (nats/token)", f"{final.get('val_loss', float('nan')):.4f}"),
        ("perplexity", f"{final.get('perplexity', float('nan')):.3f}"),
        ("validation bits per character", f"{final.get('val_bits_per_char', float('nan')):.4f}"),
        ("validation bits per byte", f"{final.get('val_bits_per_byte', float('nan')):.4f}"),
        ("train loss (last interval)", f"{final.get('train_loss') or float('nan'):.4f}"),
        ("steps", summary["steps"]),
        ("tokens", f"{summary['tokens']:,}"),
    ]
    cost_rows = [
        ("parameters", f"{summary['params']:,}"),
        ("KV cache bytes per token (16-bit)", f"{summary['kv_cache_bytes_per_token']:,}"),
        ("attention type", model_config.get("attention_type")),
        ("wall time (s)", f"{summary['wall_s']:.1f}"),
        ("training tokens/s", f"{summary['train_tokens_per_s']:.0f}"),
        ("peak memory (bytes)", f"{summary['peak_memory_bytes']:,}"),
        ("processes", summary.get("num_processes", 1)),
    ]
    text = "\n\n".join(
        [
            "# Training report",
            "## Final metrics\n\n" + markdown_table(["", ""], metric_rows),
            "## Cost\n\n" + markdown_table(["", ""], cost_rows),
            "![loss curves](loss.png)",
            f"## Sample\n\nGreedy continuation of {summary['sample_prompt']!r}:\n\n```text\n{sample}\n```",
            "## Model config\n\n```json\n" + json.dumps(model_config, indent=2, sort_keys=True, default=str) + "\n```",
            "## Training arguments\n\n```json\n"
            + json.dumps(train_args, indent=2, sort_keys=True, default=str)
            + "\n```",
        ]
    )
    with open(path, "w") as f:
        f.write(text + "\n")
