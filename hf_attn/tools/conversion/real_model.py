"""A pretrained model end to end: imported, converted to MLA at several cache sizes, recovered, run in llama.cpp.

`scripts/smollm2_experiment.py` is the command line; its output is docs/convert/smollm2/. Each
step's result is written to results.json as soon as it is measured, so a run cut short (or
resumed) keeps what it finished. Perplexity and bits per byte are scored on the first
`eval_blocks` blocks of the default corpus's validation split and on a second text that is not
the calibration data (a license text, by default: legal English prose, no verse).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...train.data import CorpusSpec, build_lm_data
from ...utils import peak_rss_bytes
from .convert import attention_errors, calibration_ids, convert_to_mla
from .importing import import_model
from .recovery import RecoveryOptions, recover_attention


@dataclass
class RealModelOptions:
    """What the real-model experiment runs."""

    source: str | None = field(default=None, metadata={"help": "a .gguf file, Llama folder or Hub id"})
    out_dir: str = field(default="docs/convert/smollm2", metadata={"help": "results.json and report.md"})
    fractions: list[float] = field(
        default_factory=lambda: [1.0, 0.5, 0.25, 0.125], metadata={"help": "cache sizes, as shares of the source's"}
    )
    rope_dim: int = field(default=32, metadata={"help": "qk_rope_head_dim of every conversion"})
    calibration_tokens: int = field(default=4096, metadata={"help": "train-split tokens for the factorization"})
    eval_blocks: int = field(default=32, metadata={"help": "validation blocks of 256 tokens scored (32: 8160)"})
    second_text: str = field(
        default="/usr/share/common-licenses/GPL-3", metadata={"help": "a second evaluation text (not calibration)"}
    )
    recovery_steps: int = field(default=100, metadata={"help": "recovery Adam steps per layer; 0: none"})
    recovery_tokens: int = field(default=8192, metadata={"help": "train-split tokens the recovery fits"})
    recovery_lr: float = field(default=2e-4, metadata={"help": "recovery learning rate"})
    threads: int = field(default=2, metadata={"help": "torch threads"})


# ---------------------------------------------------------------- scoring


def text_blocks(tokenizer, text: str, block: int = 256) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = len(ids) // block
    return torch.tensor(ids[: rows * block]).view(rows, block)


@torch.no_grad()
def score(model, tokenizer, blocks: torch.Tensor, batch_size: int = 8) -> dict:
    """Perplexity and bits per byte of `blocks` (N, T): every token after a block's first is scored."""
    nll, tokens, n_bytes = 0.0, 0, 0
    for chunk in blocks.split(batch_size):
        logits = model(input_ids=chunk).logits.float()  # (B, T, V)
        nll += F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="sum").item()
        tokens += chunk[:, 1:].numel()
        n_bytes += sum(len(tokenizer.decode(row[1:]).encode("utf-8")) for row in chunk.tolist())
    return {"perplexity": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / n_bytes, "tokens": tokens}


@dataclass
class Bench:
    """The source, its tokenizer and the fixed token sets of the experiment."""

    source: HfAttnForCausalLM
    tokenizer: object
    evals: dict
    calibration: torch.Tensor
    recovery: torch.Tensor

    def scores(self, model) -> dict:
        return {name: score(model, self.tokenizer, blocks) for name, blocks in self.evals.items()}


def build_bench(options: RealModelOptions) -> Bench:
    source, tokenizer = import_model(options.source)
    corpus = CorpusSpec()
    validation = torch.tensor(build_lm_data(corpus, tokenizer, 256).validation[: options.eval_blocks]["input_ids"])
    with open(options.second_text, encoding="utf-8") as f:
        second = text_blocks(tokenizer, f.read())[: options.eval_blocks]
    evals = {"default corpus validation": validation, os.path.basename(options.second_text): second}
    calibration = calibration_ids(tokenizer, corpus, options.calibration_tokens, 256)
    recovery = calibration_ids(tokenizer, corpus, options.recovery_tokens, 256)
    return Bench(source, tokenizer, evals, calibration, recovery)


# ---------------------------------------------------------------- steps


def measured(fn, *args, **kwargs):
    """(result, {"seconds", "peak_rss_mib"}): the process's peak resident memory so far, after the call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    peak = peak_rss_bytes() / 2**20
    return result, {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(peak)}


def conversion_shape(source, fraction: float, rope_dim: int) -> tuple[int, int]:
    """(kv_lora_rank, qk_rope_head_dim) caching `fraction` of the source's K/V values per token and layer."""
    config = source.config
    total = round(fraction * 2 * config.num_key_value_heads * config.head_dim)
    return total - rope_dim, rope_dim


def run_fraction(bench: Bench, options: RealModelOptions, fraction: float) -> tuple[dict, HfAttnForCausalLM]:
    rank, rope = conversion_shape(bench.source, fraction, options.rope_dim)
    model, cost = measured(convert_to_mla, bench.source, rank, rope, calibration_data=bench.calibration)
    record = {"fraction": fraction, "kv_lora_rank": rank, "qk_rope_head_dim": rope, "convert": cost}
    record["zero_shot"] = bench.scores(model)
    record["zero_shot_attention_errors"] = attention_errors(bench.source, model, bench.calibration[:2])
    if options.recovery_steps:
        recovery = RecoveryOptions(options.recovery_steps, options.recovery_tokens, options.recovery_lr)
        fitted, cost = measured(recover_attention, bench.source, model, bench.recovery, recovery)
        record["recovery"] = {**cost, "attention_errors_after": fitted["attention_errors_after"]}
        record["recovered"] = bench.scores(model)
    return record, model


ABLATIONS = {  # what the default conversion would be without the norm carriers, and with the exact latent norm
    "no norm carriers (the previous default)": {"latent_norm_carriers": 0},
    "latent_norm=bypass (exact norm, not trainable)": {"latent_norm": "bypass"},
}


def run_ablations(options: RealModelOptions, results: dict, fraction: float = 0.5) -> list[dict]:
    """Zero-shot scores at `fraction` of the cache for each of `ABLATIONS`; results["ablations"] after each."""
    torch.set_num_threads(options.threads)
    bench = build_bench(options)
    rank, rope = conversion_shape(bench.source, fraction, options.rope_dim)
    results["ablations"] = []
    for name, flags in ABLATIONS.items():
        model = convert_to_mla(bench.source, rank, rope, calibration_data=bench.calibration, **flags)
        results["ablations"].append(
            {"name": name, "fraction": fraction, "flags": flags, "zero_shot": bench.scores(model)}
        )
        save(options, results)
    return results["ablations"]


def ablation_lines(results: dict) -> list[str]:
    names = list(results["source"]["scores"])
    lines = ["| conversion at 1/2 of the cache, zero-shot | " + " | ".join(f"ppl {n}" for n in names) + " |"]
    lines.append("|---" + "|---:" * len(names) + "|")
    default = next((r for r in results["runs"] if r["fraction"] == 0.5), None)
    rows = [("default (norm carriers)", default["zero_shot"])] if default else []
    rows += [(a["name"], a["zero_shot"]) for a in results.get("ablations", [])]
    for name, scores in rows:
        lines.append(f"| {name} | " + " | ".join(f"{scores[n]['perplexity']:.2f}" for n in names) + " |")
    return lines


def save(options: RealModelOptions, results: dict) -> None:
    os.makedirs(options.out_dir, exist_ok=True)
    with open(os.path.join(options.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


def run_real_model(options: RealModelOptions, keep_dir: str | None = None) -> dict:
    """Import, score the source, convert/recover/score each fraction; results.json after each step.

    With `keep_dir`, each converted (and recovered) model is saved there as `mla-<fraction>`.
    """
    torch.set_num_threads(options.threads)
    bench, cost = measured(build_bench, options)
    results = {"options": asdict(options), "import": cost, "load_average": [os.getloadavg()]}
    config = bench.source.config
    results["source"] = {
        "scores": bench.scores(bench.source),
        "per_layer": 2 * config.num_key_value_heads * config.head_dim,
    }
    results["runs"] = []
    save(options, results)
    for fraction in options.fractions:
        record, model = run_fraction(bench, options, fraction)
        record["kv_cache_elements_per_token"] = model.config.kv_cache_elements_per_token
        results["runs"].append(record)
        results["load_average"].append(os.getloadavg())
        save(options, results)
        if keep_dir is not None:
            model.save_pretrained(os.path.join(keep_dir, f"mla-{fraction}"))
            bench.tokenizer.save_pretrained(os.path.join(keep_dir, f"mla-{fraction}"))
    return results


# ---------------------------------------------------------------- the report


def _row(label: str, cache: str, scores: dict, cost: str) -> str:
    cells = [f"{s['perplexity']:.2f} | {s['bits_per_byte']:.3f}" for s in scores.values()]
    return f"| {label} | {cache} | {' | '.join(cells)} | {cost} |"


def table(results: dict) -> str:
    names = list(results["source"]["scores"])
    head = " | ".join(f"ppl {n} | bpb {n}" for n in names)
    lines = [
        f"| model | cached values / token / layer | {head} | time, peak memory |",
        "|---" * (3 + 2 * len(names)) + "|",
    ]
    per_layer = results["source"]["per_layer"]
    lines.append(_row("source (GQA, imported)", f"{per_layer}", results["source"]["scores"], "—"))
    for run in results["runs"]:
        cache = f"{run['kv_lora_rank'] + run['qk_rope_head_dim']} ({run['fraction']:g})"
        shape = f"r={run['kv_lora_rank']} d_R={run['qk_rope_head_dim']}"
        cost = f"convert {run['convert']['seconds']:.0f} s, {run['convert']['peak_rss_mib']} MiB"
        lines.append(_row(f"MLA {shape} zero-shot", cache, run["zero_shot"], cost))
        if "recovered" in run:
            cost = f"recovery {run['recovery']['seconds']:.0f} s, {run['recovery']['peak_rss_mib']} MiB"
            lines.append(_row(f"MLA {shape} + recovery", cache, run["recovered"], cost))
    return "\n".join(lines)


GOALS = [  # (text, fraction, stage, allowed relative perplexity increase)
    ("full cache (1/1), after recovery: within 2% of the source", 1.0, "recovered", 0.02),
    ("full cache (1/1), zero-shot: within 2% of the source", 1.0, "zero_shot", 0.02),
    ("half cache, default flags + recovery: within 10%", 0.5, "recovered", 0.10),
    ("half cache, zero-shot: within 25%", 0.5, "zero_shot", 0.25),
    ("quarter cache, after recovery: within 50%", 0.25, "recovered", 0.50),
]


def goals(results: dict) -> list[str]:
    """Met / missed for each perplexity goal, on the default corpus's validation blocks."""
    name = next(iter(results["source"]["scores"]))
    base = results["source"]["scores"][name]["perplexity"]
    lines = []
    for text, fraction, stage, allowed in GOALS:
        run = next((r for r in results["runs"] if r["fraction"] == fraction and stage in r), None)
        if run is None:
            lines.append(f"- {text}: **not run**")
            continue
        got = run[stage][name]["perplexity"]
        verdict = "met" if got <= base * (1 + allowed) else "missed"
        lines.append(f"- {text}: **{verdict}** ({got:.2f} vs {base:.2f}: {100 * (got / base - 1):+.1f}%)")
    recovery = [r["recovery"]["seconds"] for r in results["runs"] if "recovery" in r]
    if recovery:
        verdict = "met" if max(recovery) < 900 else "missed"
        lines.append(
            f"- recovery of the whole model in under 15 minutes: **{verdict}** (slowest {max(recovery):.0f} s)"
        )
    return lines


# ---------------------------------------------------------------- llama.cpp

PROMPTS = [
    "In the beginning God created the heaven and the earth.",
    "The GNU General Public License is a free, copyleft license for",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]


@torch.no_grad()
def greedy_argmax(model, ids: list[int], new_tokens: int) -> list[int]:
    """Plain argmax continuation, EOS included (generate stops at EOS; llama_cpp_greedy does not)."""
    tokens = list(ids)
    for _ in range(new_tokens):
        tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(ids) :]


@torch.no_grad()
def llama_cpp_parity(model, tokenizer, gguf_path, new_tokens: int = 32, threads: int = 2) -> dict:
    """Token ids, greedy continuations and the prompt's last logits: llama.cpp against transformers (float32)."""
    import numpy as np

    from ..export.gguf import last_logits, llama_cpp_greedy, load_llama_cpp

    llm, _ = load_llama_cpp(gguf_path, n_ctx=512, n_threads=threads, kv_dtype="f32")
    rows = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        llama_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        want = greedy_argmax(model, ids, new_tokens)
        llm.reset()
        llm.eval(ids)
        diff = np.abs(last_logits(llm) - model(torch.tensor([ids])).logits[0, -1].numpy()).max()
        got = llama_cpp_greedy(llm, ids, new_tokens)
        rows.append({"prompt": prompt, "same_token_ids": llama_ids == ids, "same_greedy": got == want,
                     "max_abs_logit_diff": float(diff), "continuation": tokenizer.decode(want)})  # fmt: skip
    del llm
    return {"prompts": rows, "new_tokens": new_tokens}


def llama_cpp_memory_and_speed(gguf_path, contexts: list[int], steps: int, threads: int, timed: bool) -> list[dict]:
    """llama.cpp's KV buffer (f16, from its log) at each context, and decode tokens/s after a full prefill if timed."""
    import numpy as np

    from ..export.gguf import llama_cpp_decode, load_llama_cpp

    rows = []
    for context in contexts:
        llm, kv = load_llama_cpp(gguf_path, n_ctx=context, n_threads=threads)
        row = {"context": context, "kv_bytes": kv["k_bytes"] + kv["v_bytes"], **kv}
        if timed:
            prompt = np.random.default_rng(0).integers(100, 40000, context - steps - 1).tolist()
            _, prefill_s, decode_s = llama_cpp_decode(llm, prompt, steps)
            row.update(prefill_seconds=prefill_s, decode_tokens_per_second=steps / decode_s)
        rows.append(row)
        del llm
    return rows


@dataclass
class LlamaCppStageOptions:
    """The llama.cpp part of the real-model experiment."""

    keep_dir: str = field(default="/tmp/smollm2/runs", metadata={"help": "converted models are saved here"})
    llama_cpp_fraction: float = field(default=0.5, metadata={"help": "the conversion run in llama.cpp"})
    contexts: list[int] = field(default_factory=lambda: [4096, 8192], metadata={"help": "llama.cpp contexts"})
    timed: bool = field(default=False, metadata={"help": "also time decode after a full prefill at each context"})
    skip_conversions: bool = field(default=False, metadata={"help": "reuse results.json and keep_dir's models"})
    skip_llama_cpp: bool = field(default=False, metadata={"help": "stop after the conversions"})
    ablations: bool = field(
        default=False, metadata={"help": "also score the 1/2 conversion without carriers / bypass"}
    )


def run_llama_cpp_stage(options: RealModelOptions, stage: LlamaCppStageOptions, results: dict) -> dict:
    """Export the source and one conversion as f32 GGUF; parity with transformers, KV buffer and decode speed."""
    from ...loading import load_model_and_tokenizer
    from ..export.gguf import export_gguf

    source, tokenizer = import_model(options.source)
    folder = os.path.join(stage.keep_dir, f"mla-{stage.llama_cpp_fraction}")
    mla, _ = load_model_and_tokenizer(folder, HfAttnForCausalLM)
    out = {}
    for name, model in (("source", source), ("mla", mla)):
        path = export_gguf(model, os.path.join(stage.keep_dir, f"{name}.gguf"), dtype="f32", tokenizer=tokenizer)
        out[name] = {"parity": llama_cpp_parity(model, tokenizer, path, threads=options.threads)}
        out[name]["kv"] = llama_cpp_memory_and_speed(path, stage.contexts, 16, options.threads, stage.timed)
        results["llama_cpp"], results["llama_cpp_fraction"] = out, stage.llama_cpp_fraction
        save(options, results)
    return out


def llama_cpp_lines(out: dict, fraction: float) -> list[str]:
    lines = [
        "| model | prompt | same token ids | same 32 greedy tokens | max abs logit diff |",
        "|---|---|---|---|---:|",
    ]
    for name, record in out.items():
        for row in record["parity"]["prompts"]:
            prompt = row["prompt"].replace("\n", "\\n").replace("|", "\\|")[:48]
            lines.append(
                f"| {name} | `{prompt}` | {row['same_token_ids']} | {row['same_greedy']} | "
                f"{row['max_abs_logit_diff']:.2e} |"
            )
    lines += ["", "| model | context | llama.cpp KV buffer (f16) | decode tokens/s |", "|---|---:|---:|---:|"]
    for name, record in out.items():
        for row in record["kv"]:
            speed = f"{row['decode_tokens_per_second']:.1f}" if "decode_tokens_per_second" in row else "not timed"
            lines.append(f"| {name} | {row['context']} | {row['kv_bytes'] / 2**20:.2f} MiB | {speed} |")
    if "source" in out and "mla" in out:
        for s, m in zip(out["source"]["kv"], out["mla"]["kv"]):
            share = m["kv_bytes"] / s["kv_bytes"]
            verdict = "met" if share <= fraction + 1e-9 else "missed"
            lines.append(
                f"\nKV buffer at {s['context']}: {share:.3f} of the source's (goal <= {fraction:g}): **{verdict}**"
            )
    return lines


def hf_attn_kv_lines(results: dict, contexts=(4096, 8192), batches=(1, 8)) -> list[str]:
    """hf_attn's float32 KV cache: cached elements per token (all layers) x 4 bytes x context x batch, computed."""
    layers = (
        30
        if not results["runs"]
        else results["runs"][0]["kv_cache_elements_per_token"]
        // (results["runs"][0]["kv_lora_rank"] + results["runs"][0]["qk_rope_head_dim"])
    )
    models = [("source", results["source"]["per_layer"] * layers)]
    models += [(f"MLA {r['fraction']:g}", r["kv_cache_elements_per_token"]) for r in results["runs"]]
    head = " | ".join(f"{c} tokens, batch {b}" for c in contexts for b in batches)
    lines = [f"| model | elements / token | {head} |", "|---|---:" + "|---:" * len(contexts) * len(batches) + "|"]
    for name, elements in models:
        cells = " | ".join(f"{elements * 4 * c * b / 2**20:,.0f} MiB" for c in contexts for b in batches)
        lines.append(f"| {name} | {elements:,} | {cells} |")
    return lines


def not_run(results: dict) -> list[str]:
    """What the report lacks: stages results.json has no record of."""
    lines = []
    if "finetune" not in results:
        lines.append("- The full fine-tune (`--finetune-tokens`): not run.")
    if "decode" not in results:
        lines.append("- Decode tokens/s in hf_attn and llama.cpp at batch 1 and 8 (`--decode`): not run.")
    return lines


def write_report(
    options: RealModelOptions, results: dict, command_line: str, environment: dict, sections: list[str] = ()
) -> str:
    """report.md from results.json; `sections`, the later stages' markdown lines, go before "Not run"."""
    text = [
        "# SmolLM2-135M-Instruct: imported, converted to MLA, recovered, run in llama.cpp",
        "",
        f"Produced by `{command_line}` on a shared, loaded 2-core CPU without a GPU (load averages "
        f"{', '.join(f'{a[0]:.1f}' for a in results['load_average'])} during the run: timings are upper bounds). "
        f"Environment: {json.dumps(environment)}.",
        "",
        f"Source: `{options.source}` imported with `hf-attn-import` (dequantized Q4_1 -> float32). Scores: the first "
        f"{options.eval_blocks} blocks of 256 tokens of the default corpus's validation split, and of "
        f"`{options.second_text}` (not calibration data). Conversion: `convert_to_mla` with default flags (only "
        f"kv_lora_rank and qk_rope_head_dim = {options.rope_dim} given; {options.calibration_tokens} train-split "
        f"calibration tokens, norm carriers on); recovery: {options.recovery_steps} Adam steps per layer at lr "
        f"{options.recovery_lr} on {options.recovery_tokens} train-split tokens (`--recovery-steps`).",
        "",
        table(results),
        "",
        "## Goals",
        "",
        *goals(results),
    ]
    if "ablations" in results:
        text += ["", "## What collapsed the default conversion", "", *ablation_lines(results)]
    text += ["", "## hf_attn KV cache (float32, computed from the config, not timed)", "", *hf_attn_kv_lines(results)]
    if "llama_cpp" in results:
        text += [
            "",
            "## llama.cpp (f32 GGUF, llama-cpp-python)",
            "",
            *llama_cpp_lines(results["llama_cpp"], results["llama_cpp_fraction"]),
        ]
    text += list(sections)
    if not_run(results):
        text += ["", "## Not run", "", *not_run(results)]
    report = "\n".join(text) + "\n"
    with open(os.path.join(options.out_dir, "report.md"), "w") as f:
        f.write(report)
    return report
