"""Decode at serving scale on CPU: every attention design, batches, cache implementations, compiled steps.

Models (one process, float32, same trunk: 4 layers, width 512, 8 heads): hf_attn with every
`attention_type` (MHA, GQA, MQA, MLA, Performer) and MHA with a sliding window; transformers'
DeepseekV3ForCausalLM carrying the MLA weights and LlamaForCausalLM carrying the MHA weights.

For each context, every model runs the random prompt once, batch 1 (not timed). Each run copies that
cache across the batch (`expand_cache_batch`: the prefill is shared, the decode steps are real and
per sequence) and times `steps` greedy steps, along each path (`DECODE_PATHS`):

  dynamic   DynamicCache, eager: what generate() uses unless told otherwise
  static    StaticCache, eager: no growing torch.cat per step
  compiled  StaticCache, the forward under torch.compile (inductor); only at `compile_cells`
  generate  model.generate() itself, on the cache a plain call builds (the generation config's, else
            the model's `default_cache_implementation`, else transformers' DynamicCache)

transformers' twins run the dynamic and static paths, up to `twin_max_batch`.

Runs alternate between models (and paths) within each repetition; tables show medians, and each run's
peak resident memory above the level before it (cache copy + decode). Every path must give the same
greedy tokens as the dynamic one; a mismatch is printed. `scripts/bench_decode.py` is the command line.
"""

import copy
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from ...utils import cache_bytes, format_table
from ..export.to_transformers import export_refusal
from .decode import (
    DECODE_MLA_DIMS,
    DECODE_PATHS,
    DECODE_TRUNK,
    decode_configs,
    decode_steps,
    default_cache_implementation,
    expand_cache_batch,
    filled_cache,
    generate_steps,
)
from .memory import PeakRSS, return_freed_memory
from .timing import alternating_order, build_model, reference_twin, write_json


@dataclass
class DecodeBenchOptions:
    contexts: list[int] = field(default_factory=lambda: [2048, 4096, 8192], metadata={"help": "prompt lengths"})
    batches: list[int] = field(default_factory=lambda: [1, 8, 32], metadata={"help": "batch sizes"})
    steps: int = field(default=4, metadata={"help": "timed decode steps per run"})
    repeats: int = field(default=2, metadata={"help": "runs per model, path and cell"})
    compile_cells: list[str] = field(
        default_factory=lambda: ["8x2048"],
        metadata={
            "help": "BATCHxCONTEXT cells where the compiled path runs too (compiling costs ~1 min per model); "
            "`none`: nowhere"
        },
    )
    models: list[str] | None = field(default=None, metadata={"help": "a subset of the models, by name"})
    twin_max_batch: int = field(default=8, metadata={"help": "largest batch the twins run"})
    twins: bool = field(default=True, metadata={"help": "DeepseekV3 and Llama too (--no-twins: leave them out)"})
    window: int = field(default=1024, metadata={"help": "sliding window of the windowed MHA (0: none)"})
    attn: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "attention kernel, all models"})
    vocab_size: int = field(default=8192, metadata={"help": "vocabulary of the random models"})
    threads: int = field(default=2, metadata={"help": "torch threads"})
    seed: int = field(default=0, metadata={"help": "seed of the weights and the prompts"})
    json: str | None = field(default=None, metadata={"help": "write the results here"})

    def __post_init__(self):
        self.compile_cells = [cell for cell in self.compile_cells if cell != "none"]


TWIN_FORMATS = ("deepseek_v3", "llama")  # transformers' classes run beside hf_attn's, each with one model's weights


def twin_sources(configs: dict) -> dict[str, str]:
    """transformers' class -> the hf_attn model whose weights it carries: for each of `TWIN_FORMATS`, the
    first of `configs` whose design exports to it (`export_refusal`): MLA for DeepseekV3, MHA for Llama."""
    found = {}
    for format in TWIN_FORMATS:
        source = next((name for name, config in configs.items() if export_refusal(config, format) is None), None)
        if source is not None:
            found[format] = source
    return found


TWINS = twin_sources(decode_configs(vocab_size=256, max_positions=8, window=2))  # the designs, whatever the sizes


def build_models(options: DecodeBenchOptions, max_positions: int) -> tuple[dict, dict]:
    """The models of the comparison (`--models`, default all) in eval mode, and the hf_attn config behind
    each (a twin's is its source's). A twin needs its source model, which is then built too."""
    configs = decode_configs(options.vocab_size, max_positions, options.window)
    names = options.models or [*configs, *(TWINS if options.twins else ())]
    needed = {TWINS.get(name, name) for name in names}
    models = {
        name: build_model(config, options.attn, options.seed).eval()
        for name, config in configs.items()
        if name in needed
    }
    for twin, source in TWINS.items():
        if twin in names:
            models[twin] = reference_twin(models[source]).eval()
            configs[twin] = configs[source]
    return {name: models[name] for name in names}, {name: configs[name] for name in names}


def paths_for(name: str, cell: tuple[int, int], options) -> list[str]:
    """The paths a model runs in one (context, batch) cell.

    transformers' twins run dynamic and static only (their plain generate() is the dynamic path), and
    only up to `--twin-max-batch` (DeepseekV3 re-expands every cached latent at every step: at batch
    32 and 8192 tokens a step takes seconds). hf_attn compiles only at `--compile-cells`.
    """
    context, batch = cell
    if name in TWINS:
        return ["dynamic", "static"] if batch <= options.twin_max_batch else []
    paths = ["dynamic", "static", "generate"]
    if f"{batch}x{context}" in options.compile_cells:
        paths.append("compiled")
    return paths


def cache_kind(model, path: str) -> str:
    """The cache a path decodes on: generate() uses the model's default, the others their own."""
    if path == "generate":
        return default_cache_implementation(model)
    return "dynamic" if path == "dynamic" else "static"


def one_run(model, step, path: str, source: dict, prompt, batch: int, steps: int) -> dict:
    """Copy the batch-1 cache in `source` across `batch` rows and time `steps` steps along `path`."""
    kind = cache_kind(model, path)
    with PeakRSS() as peak:
        cache, token = source[kind]
        cache = expand_cache_batch(copy.deepcopy(cache), batch)
        token = token.expand(batch, 1)  # (B, 1)
        start = time.perf_counter()
        if path == "generate":
            tokens = generate_steps(model, cache, prompt.expand(batch, -1), token, steps)
        else:
            tokens = decode_steps(step, cache, token, prompt.shape[1], steps)
        seconds = time.perf_counter() - start
        nbytes = cache_bytes(cache)
    del cache
    return {"seconds": seconds, "tokens": tokens, "peak_bytes": peak.peak_bytes, "cache_bytes": nbytes, "cache": kind}


def run_cell(models, compiled, sources, prompt, cell, options) -> dict:
    """Every model along each of its paths, `--repeats` times, interleaved; medians and token checks."""
    context, batch = cell
    runs = {name: {path: [] for path in paths_for(name, cell, options)} for name in models}
    runs = {name: by_path for name, by_path in runs.items() if by_path}
    for name in runs:  # compile outside the timing: one untimed run per compiled model and cell
        if "compiled" in runs[name]:
            start = time.perf_counter()
            one_run(models[name], compiled[name], "compiled", sources[name], prompt, batch, 2)
            runs[name]["compile_seconds"] = time.perf_counter() - start
    for i in tqdm(range(options.repeats), desc=f"context {context} batch {batch}", leave=False):
        for name in alternating_order(list(runs), i):
            for path in alternating_order([p for p in runs[name] if p in DECODE_PATHS], i):
                step = compiled.get(name) if path == "compiled" else models[name]
                runs[name][path].append(one_run(models[name], step, path, sources[name], prompt, batch, options.steps))
                gc.collect()
    return summarize_cell(runs, batch, options.steps)


def summarize_cell(runs: dict, batch: int, steps: int) -> dict:
    """tokens/s (median), peak memory (max) and token agreement with the dynamic path, per model and path."""
    cell = {}
    for name, by_path in runs.items():
        reference = by_path["dynamic"][0]["tokens"]
        cell[name] = {"compile_seconds": by_path.get("compile_seconds")}
        for path, samples in by_path.items():
            if path not in DECODE_PATHS:
                continue
            seconds = [s["seconds"] for s in samples]
            cell[name][path] = {
                "tok_s": batch * steps / statistics.median(seconds),
                "seconds": seconds,
                "peak_mib": max(s["peak_bytes"] for s in samples) / 2**20,
                "cache_mib": samples[0]["cache_bytes"] / 2**20,
                "cache": samples[0]["cache"],
                "same_tokens": all(torch.equal(s["tokens"], reference) for s in samples),
            }
        cell[name]["best"] = max((p for p in cell[name] if p in DECODE_PATHS), key=lambda p: cell[name][p]["tok_s"])
    return cell


# The project's goals, per design: [(reference model, minimum ratio of best-path tokens/s, cells (context, batch))]
GOALS = {
    "mla": [
        ("mha", 1.5, [(4096, 1)]),
        ("mha", 2.0, [(4096, 8), (4096, 32), (8192, 8), (8192, 32)]),
        ("deepseek_v3", 8.0, [(8192, 1)]),
    ],
    "performer": [("mha", 2.0, [(8192, 1), (8192, 8), (8192, 32)])],  # Performer's at batch 1: issue 14
}


def goals_by_cell(goals: dict) -> dict[tuple[int, int], list[tuple[str, str, float]]]:
    """(context, batch) -> [(model, reference model, minimum ratio)], in the order of `goals`."""
    cells: dict[tuple[int, int], list[tuple[str, str, float]]] = {}
    for name, targets in goals.items():
        for other, minimum, where in targets:
            for cell in where:
                cells.setdefault(cell, []).append((name, other, minimum))
    return cells


TARGETS = goals_by_cell(GOALS)
GENERATE_WITHIN = 0.9  # plain generate() within 10% of the model's best path


def prefill_sources(models, prompt, max_len) -> dict:
    """Each model's batch-1 caches of `prompt` (dynamic and static) and the next token, once per context.

    The static cache is a copy of the dynamic one where the layers allow (`filled_cache`).
    """
    sources = {}
    for name, model in models.items():
        dynamic = filled_cache(model, prompt, "dynamic", max_len)
        sources[name] = {"dynamic": dynamic, "static": filled_cache(model, prompt, "static", max_len, source=dynamic)}
    return sources


def best_ratio(cell: dict, name: str, other: str | None):
    """`name`'s tokens/s on its fastest path over `other`'s on its own fastest path ("-" if absent)."""
    if other not in cell:
        return "-"
    return cell[name][cell[name]["best"]]["tok_s"] / cell[other][cell[other]["best"]]["tok_s"]


CELL_COLUMNS = [
    "best",
    "best/MHA best",
    "best/twin best",
    "generate/best",
    "generate/dynamic",
    "generate cache",
    "peak MiB (best)",
    "cache MiB",
    "tokens vs dynamic",
]


def cell_row(cell: dict, name: str, paths: list[str]) -> list:
    """One model's row of a cell's table: tokens/s per path, then `CELL_COLUMNS`."""
    m = cell[name]
    best = m[m["best"]]
    twin = next((t for t, s in TWINS.items() if s == name), None)
    generate = m.get("generate")
    return [
        name,
        *(m[p]["tok_s"] if p in m else "-" for p in paths),
        m["best"],
        best_ratio(cell, name, "mha"),
        best_ratio(cell, name, twin),
        generate["tok_s"] / best["tok_s"] if generate else "-",
        generate["tok_s"] / m["dynamic"]["tok_s"] if generate else "-",
        generate["cache"] if generate else "-",
        best["peak_mib"],
        best["cache_mib"],
        ", ".join(p for p in paths if p in m and not m[p]["same_tokens"]) or "all same",
    ]


def print_cell(context: int, batch: int, cell: dict) -> list[list]:
    """One table per cell: tokens/s per path, peak memory, token agreement; returns the goal rows."""
    paths = [p for p in DECODE_PATHS if any(p in m for m in cell.values())]
    print(f"\ncontext {context}, batch {batch}: decode tokens/s, all sequences together (median)")
    print(format_table(["model", *paths, *CELL_COLUMNS], [cell_row(cell, name, paths) for name in cell]))
    compile_s = {n: m["compile_seconds"] for n, m in cell.items() if m.get("compile_seconds")}
    if compile_s:
        print("compile (first call, untimed above): " + ", ".join(f"{n} {s:.0f}s" for n, s in compile_s.items()))
    goals = []
    for name, other, minimum in TARGETS.get((context, batch), []):
        if name in cell and other in cell:
            value = best_ratio(cell, name, other)
            goals.append([f"{context} x {batch}", f"{name}/{other} (best paths)", value, minimum, value >= minimum])
    for name, m in cell.items():
        value = m["generate"]["tok_s"] / m[m["best"]]["tok_s"] if "generate" in m else 1.0
        if value < GENERATE_WITHIN:  # the rows that miss; every generate/best is in the table above
            goals.append([f"{context} x {batch}", f"{name} generate/best", value, GENERATE_WITHIN, False])
    return goals


def print_setup(options: DecodeBenchOptions, models: dict) -> None:
    print(f"torch {torch.__version__}, {options.threads} threads, float32, attn_implementation={options.attn}")
    print(f"trunk: {DECODE_TRUNK}, vocab {options.vocab_size}; MLA {DECODE_MLA_DIMS}; others head_dim 64")
    print(f"mha_window: MHA with sliding_window {options.window}")
    print(f"{options.steps} timed steps per run, {options.repeats} repeats, models and paths alternating")
    print(
        "default cache of a plain generate(): "
        + ", ".join(f"{n} {default_cache_implementation(m)}" for n, m in models.items())
    )


def run_decode_benchmark(options: DecodeBenchOptions) -> dict:
    """Every (context, batch) cell: a table each, then the goals; writes `json`; returns the cells."""
    torch.set_num_threads(options.threads)
    return_freed_memory()
    models, _ = build_models(options, max(options.contexts) + 1 + options.steps)
    # torch.compile only wraps here; each model compiles on its first call in a compile cell
    compiled = {name: torch.compile(model, dynamic=False) for name, model in models.items() if options.compile_cells}
    print_setup(options, models)

    generator = torch.Generator().manual_seed(options.seed)
    results, goals = {}, []
    for context in options.contexts:
        prompt = torch.randint(0, options.vocab_size, (1, context), generator=generator)
        sources = prefill_sources(models, prompt, context + 1 + options.steps)
        for batch in options.batches:
            cell = run_cell(models, compiled, sources, prompt, (context, batch), options)
            goals += print_cell(context, batch, cell)
            results[f"{context}x{batch}"] = cell
        del sources
        gc.collect()

    print("\nthe project's goals (decode tokens/s ratios; each model on its fastest path)")
    print(
        format_table(["context x batch", "ratio", "value", "goal", "met"], goals) if goals else "none in these cells"
    )
    if options.json:
        for cell in results.values():
            for m in cell.values():
                for p in DECODE_PATHS:
                    m.get(p, {}).pop("tokens", None)
        write_json(options.json, options, {"cells": results, "goals": goals})
    return results
