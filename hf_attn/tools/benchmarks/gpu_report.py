"""The GPU benchmark's report: markdown tables per part, and the whole result as JSON beside it."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from ...utils import markdown_table

if TYPE_CHECKING:
    from .gpu import Sizes


def fmt(value, spec: str = ",.0f") -> str:
    """A number formatted, or the dash of a missing one."""
    return "—" if value is None else format(value, spec)


def train_section(rows: list[dict], sizes: Sizes, env: dict) -> list[str]:
    """The training table: tokens/s, ms/step, MFU per attention type and kernel."""
    peak = env["peak_bf16_flops"]
    lines = [
        "## Training (bf16 autocast, float32 master weights, fused AdamW)",
        "",
        f"Preset `{sizes.train_preset}`, batch {sizes.train_batch} x {sizes.train_seq} tokens, "
        f"{sizes.train_warmup} warm-up steps, then {sizes.train_steps} timed. FLOPs per token = 6 N + "
        "6 L H T (d_qk + d_v) (PaLM appendix B; Performer: 6 N). "
        f"MFU against a dense bf16 peak of {fmt(peak and peak / 1e12, ',.1f')} TFLOP/s ({env['device']}).",
        "",
    ]
    table = []
    for r in rows:
        note = r.get("skipped") or r.get("error") or ""
        table.append(
            [
                r["attention_type"],
                r["kernel"],
                fmt(r.get("params_M"), ".1f"),
                fmt(r.get("tokens_per_s")),
                fmt(r.get("ms_per_step"), ".1f"),
                fmt(r.get("flops_per_token") and r["flops_per_token"] / 1e9, ".3f"),
                fmt(r.get("mfu") and 100 * r["mfu"], ".1f"),
                fmt(r.get("peak_mem_GiB"), ".1f"),
                note,
            ]
        )
    headers = ["attention", "kernel", "params (M)", "tokens/s", "ms/step", "GFLOP/token", "MFU %", "peak GiB", "note"]
    return lines + [markdown_table(headers, table, "llrrrrrrl"), ""]


def decode_section(rows: list[dict], sizes: Sizes) -> list[str]:
    """The decode table: tokens/s per model, batch and cache, and MLA's ratio to the others."""
    lines = [
        "## Decode (bf16, sdpa, greedy, eager step)",
        "",
        f"Preset `{sizes.decode_preset}`, {sizes.decode_context} tokens of context (one prefill copied "
        f"across the batch), {sizes.decode_steps} timed decode steps; tokens/s counts every sequence.",
        "",
    ]
    table = [
        [
            r["model"],
            r["batch"],
            r["cache"],
            fmt(r.get("tokens_per_s")),
            fmt(r.get("ms_per_step"), ".2f"),
            r.get("skipped") or r.get("error") or "",
        ]
        for r in rows
    ]
    lines += [markdown_table(["model", "batch", "cache", "tokens/s", "ms/step", "note"], table, "lrlrrl"), ""]
    best = {}
    for r in rows:
        if r.get("tokens_per_s"):
            key = (r["model"], r["batch"])
            best[key] = max(best.get(key, 0.0), r["tokens_per_s"])
    models = list(dict.fromkeys(r["model"] for r in rows))  # the decode part's first design against the rest
    for batch in sizes.decode_batches:
        mine = best.get((models[0], batch)) if models else None
        for other in models[1:]:
            if mine and best.get((other, batch)):
                lines.append(
                    f"- batch {batch}, each on its faster cache: {models[0].upper()} / {other} = "
                    f"{mine / best[(other, batch)]:.2f}x"
                )
    return lines + [""]


def fsdp_section(result: dict) -> list[str]:
    """What the training launches did: command, exit codes, checkpoints, resume, final load."""
    lines = ["## Training CLI under FSDP", ""]
    if result.get("skipped"):
        return lines + [f"Skipped: {result['skipped']}.", ""]
    if result.get("skipped_fsdp"):
        lines += [f"**FSDP skipped**: {result['skipped_fsdp']}.", ""]
    lines += ["FSDP command (first launch):", "", "```", result["fsdp_command"], "```", ""]
    for i, launch in enumerate(result.get("launches", []), 1):
        what = "resume" if i == 2 else "first launch"
        lines.append(f"- {what}: exit {launch['returncode']} in {launch['seconds']:.1f} s")
        if "resumed" in launch:
            lines.append(
                f"  - resumed from the first launch's newest checkpoint, {launch['resumed_from']}: {launch['resumed']}"
            )
        for name, entries in launch["checkpoints"].items():
            lines.append(f"  - checkpoints/{name}: {', '.join(entries)}")
    final = result.get("final_model")
    if final:
        lines.append(
            f"- final save loads with `AutoModelForCausalLM.from_pretrained` as {final['class']}: "
            f"loss {final['loss']:.3f} on random ids (finite: {final['finite']}), "
            f"last logged step {final['last_logged_step']}"
        )
    elif result.get("error"):
        lines.append(f"- error: {result['error']}")
    else:
        lines.append("- the final model was not checked: a launch failed (stderr in the JSON)")
    return lines + [""]


def write_report(path: str, report: dict, sizes: Sizes) -> None:
    """`path` (markdown) and the same name with .json."""
    env = report["environment"]
    lines = [
        "# GPU benchmark (scripts/bench_gpu.py)",
        "",
        f"{env['device']}; torch {env['torch']} (CUDA {env['cuda_version']}), transformers {env['transformers']}, "
        f"Python {env['python']}; flash_attn installed: {env['flash_attn']}. "
        f"Mode: {'smoke (CPU, tiny sizes)' if report['smoke'] else 'full'}. "
        f"Total {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget.",
        "",
    ]
    for part, why in report["skipped_parts"].items():
        lines.append(f"- part `{part}` skipped: {why}")
    lines.append("")
    if "train" in report:
        lines += train_section(report["train"], sizes, env)
    if "decode" in report:
        lines += decode_section(report["decode"], sizes)
    if "fsdp" in report:
        lines += fsdp_section(report["fsdp"])
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"wrote {path} and its .json")
