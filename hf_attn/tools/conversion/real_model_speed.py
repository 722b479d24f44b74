"""The real-model experiment's decode timing: source against conversion, in hf_attn and in llama.cpp.

At each context the prompt (random token ids: the speed of a step does not depend on the text) is
prefilled once at batch 1; the batch-1 steps are timed, then the cache is copied to every row of the
batch and the batch steps are timed, in hf_attn (`benchmarks.decode`: DynamicCache, eager, float32)
and in llama.cpp (f32 weights, f16 cache, one KV stream per sequence). The two models are timed one
after the other in the same run, and the report gives their ratio: on a shared machine only the ratio
means much. KV bytes are measured: the tensors hf_attn's cache holds, and the buffer llama.cpp logs.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...loading import load_model_and_tokenizer
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...utils import cache_bytes
from ..benchmarks.decode import decode_steps, expand_cache_batch, filled_cache
from .real_model import LlamaCppStageOptions, RealModelOptions, save
from .real_model_finetune import finetune_lines, plot_finetune, source_folder


@dataclass
class DecodeStageOptions:
    """Decode timing of the source and the llama.cpp conversion."""

    decode: bool = field(default=False, metadata={"help": "time decoding in hf_attn and llama.cpp (minutes)"})
    decode_contexts: list[int] = field(default_factory=lambda: [4096, 8192], metadata={"help": "cached tokens"})
    decode_batch: int = field(default=8, metadata={"help": "the batch timed after batch 1"})
    decode_steps: int = field(default=8, metadata={"help": "greedy steps timed per measurement"})
    flash_attn: list[str] = field(
        default_factory=lambda: ["auto", "off"], metadata={"help": "llama.cpp flash attention settings timed"}
    )


def random_prompt(context: int, steps: int) -> list[int]:
    """Token ids that leave room for the timed steps (and one warm-up step) inside `context`."""
    return np.random.default_rng(0).integers(100, 40000, context - steps - 2).tolist()


@torch.inference_mode()
def hf_attn_decode(model, context: int, batch: int, steps: int) -> list[dict]:
    """Batch-1 and batch-`batch` decode at `context` cached tokens: tokens/s and the cache's bytes."""
    prompt = torch.tensor([random_prompt(context, steps)])
    start = time.perf_counter()
    cache, token = filled_cache(model, prompt, "dynamic", context)
    prefill_s = time.perf_counter() - start
    rows = []
    for size in dict.fromkeys((1, batch)):
        rows_cache = expand_cache_batch(copy.deepcopy(cache), size)
        first = token.repeat(size, 1)
        warm = decode_steps(model, rows_cache, first, prompt.shape[1], 1)  # one untimed step
        start = time.perf_counter()
        decode_steps(model, rows_cache, warm[:, -1:], prompt.shape[1] + 1, steps)
        seconds = time.perf_counter() - start
        rows.append({"engine": "hf_attn", "context": context, "batch": size, "prefill_seconds": prefill_s,
                     "tokens_per_second": size * steps / seconds, "kv_bytes": cache_bytes(rows_cache)})  # fmt: skip
        del rows_cache
    return rows


def llama_cpp_decode_rows(gguf_path: str, context: int, batch: int, steps: int, threads: int, flash: str):
    """The same measurement in llama.cpp, one KV stream per sequence."""
    import llama_cpp

    from ..export.gguf import llama_cpp_sequences_context, llama_cpp_sequences_decode, load_llama_cpp

    llm, _ = load_llama_cpp(gguf_path, n_ctx=256, n_threads=threads)
    ctx, kv = llama_cpp_sequences_context(llm, context, batch, threads, flash)
    try:
        out = llama_cpp_sequences_decode(ctx, random_prompt(context, steps), batch, steps, llm.n_vocab())
    finally:
        llama_cpp.llama_free(ctx)
        del llm
    per_sequence = (kv["k_bytes"] + kv["v_bytes"]) / batch
    engine = f"llama.cpp (flash attention {flash})"
    return [
        {"engine": engine, "context": context, "batch": size, "prefill_seconds": out["prefill_seconds"],
         "tokens_per_second": size * steps / out[f"decode_seconds_batch_{size}"], "kv_bytes": per_sequence * size}
        for size in dict.fromkeys((1, batch))
    ]  # fmt: skip


def run_decode_stage(options: RealModelOptions, stage: LlamaCppStageOptions, decode: DecodeStageOptions, results):
    """hf_attn and llama.cpp decode for the source and the `llama_cpp_fraction` conversion; results["decode"]."""
    torch.set_num_threads(options.threads)
    names = {"source": source_folder(options.source, stage.keep_dir), "mla": f"mla-{stage.llama_cpp_fraction}"}
    results["decode"] = {"options": vars(decode).copy(), "fraction": stage.llama_cpp_fraction, "rows": []}
    for context in decode.decode_contexts:
        for name, folder in names.items():
            model, _ = load_model_and_tokenizer(os.path.join(stage.keep_dir, folder), HfAttnForCausalLM)
            rows = hf_attn_decode(model, context, decode.decode_batch, decode.decode_steps)
            del model
            gguf = os.path.join(stage.keep_dir, f"{name}.gguf")
            shape = (context, decode.decode_batch, decode.decode_steps, options.threads)
            for flash in decode.flash_attn:
                rows += llama_cpp_decode_rows(gguf, *shape, flash)
            for row in rows:
                row.update(model=name, load_average=os.getloadavg()[0])
            results["decode"]["rows"] += rows
            save(options, results)
    return results["decode"]


def decode_lines(record: dict) -> list[str]:
    """One row per engine, context and batch: source and MLA side by side, with their ratios."""
    rows = record["rows"]
    keys = dict.fromkeys((r["engine"], r["context"], r["batch"]) for r in rows)
    lines = [
        "| engine | context | batch | source tokens/s | MLA tokens/s | MLA / source speed | source KV | MLA KV "
        "| MLA / source KV |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for engine, context, batch in keys:
        pair = {r["model"]: r for r in rows if (r["engine"], r["context"], r["batch"]) == (engine, context, batch)}
        if set(pair) != {"source", "mla"}:
            continue
        s, m = pair["source"], pair["mla"]
        lines.append(
            f"| {engine} | {context} | {batch} | {s['tokens_per_second']:.1f} | {m['tokens_per_second']:.1f} | "
            f"{m['tokens_per_second'] / s['tokens_per_second']:.2f} | {s['kv_bytes'] / 2**20:,.0f} MiB | "
            f"{m['kv_bytes'] / 2**20:,.0f} MiB | {m['kv_bytes'] / s['kv_bytes']:.3f} |"
        )
    return lines


def decode_goals(record: dict) -> list[str]:
    """llama.cpp at the longest context: the conversion's KV share and decode speed against the source's."""
    longest = max(r["context"] for r in record["rows"])
    lines = []
    for r in record["rows"]:
        if r["model"] != "mla" or r["context"] != longest or not r["engine"].startswith("llama.cpp"):
            continue
        s = next(x for x in record["rows"] if x["model"] == "source" and
                 (x["engine"], x["context"], x["batch"]) == (r["engine"], r["context"], r["batch"]))  # fmt: skip
        ratio = r["tokens_per_second"] / s["tokens_per_second"]
        share = r["kv_bytes"] / s["kv_bytes"]
        lines.append(
            f"- {r['engine']}, {longest} tokens, batch {r['batch']}: KV {share:.3f} of the source's (goal <= "
            f"{record['fraction']:g}): **{'met' if share <= record['fraction'] + 1e-9 else 'missed'}**; decode "
            f"{ratio:.2f}x the source's speed (goal >= 1): **{'met' if ratio >= 1 else 'missed'}**"
        )
    return lines


def later_sections(options: RealModelOptions, results: dict) -> list[str]:
    """The report's fine-tune and decode sections, and the fine-tune plot, for what results.json holds."""
    text = []
    if results.get("finetune", {}).get("runs"):
        plot = plot_finetune(results, os.path.join(options.out_dir, "finetune.png"))
        tokens = results["finetune"]["options"]["finetune_tokens"]
        text += ["", f"## Full fine-tune ({tokens:,} train-split tokens, `--init-from`)", "",
                 f"![fine-tune curves]({os.path.basename(plot)})", "", *finetune_lines(results)]  # fmt: skip
    if results.get("decode", {}).get("rows"):
        text += ["", "## Decode speed and KV bytes, measured", "", *decode_lines(results["decode"]), "",
                 *decode_goals(results["decode"])]  # fmt: skip
    return text
