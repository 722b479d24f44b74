"""Decode at serving scale on CPU: every attention design, batches, cache implementations, compiled steps.

Models (one process, float32, same trunk: 4 layers, width 512, 8 heads): hf_attn with every
`attention_type` (MHA, GQA, MQA, MLA, Performer) and MHA with a sliding window; transformers'
DeepseekV3ForCausalLM carrying the MLA weights and LlamaForCausalLM carrying the MHA weights.

For each context, every model runs the random prompt once, batch 1 (not timed). Each run copies that
cache across the batch (`expand_cache_batch`: the prefill is shared, the decode steps are real and
per sequence) and times `--steps` greedy steps, along each path (`DECODE_PATHS`):

  dynamic   DynamicCache, eager: what generate() uses unless told otherwise
  static    StaticCache, eager: no growing torch.cat per step
  compiled  StaticCache, the forward under torch.compile (inductor); only at `--compile-cells`
  generate  model.generate() itself, on the cache a plain call builds (the generation config's, else
            the model's `default_cache_implementation`, else transformers' DynamicCache)

transformers' twins run the dynamic and static paths, up to `--twin-max-batch`.

Runs alternate between models (and paths) within each repetition; tables show medians, and each run's
peak resident memory above the level before it (cache copy + decode). Every path must give the same
greedy tokens as the dynamic one; a mismatch is printed.

    python scripts/bench_decode.py --json docs/bench/bench_decode.json   # the full run, ~8 min on 2 cores
    python scripts/bench_decode.py --compile-cells                        # without the compiled path
    python scripts/bench_decode.py --contexts 512 --batches 1 4 --steps 4 --repeats 1 --compile-cells  # a look
"""

import argparse
import copy
import gc
import statistics
import time

import torch
from tqdm.auto import tqdm

from hf_attn.tools.benchmarks.decode import (
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
from hf_attn.tools.benchmarks.memory import PeakRSS, return_freed_memory
from hf_attn.tools.benchmarks.timing import alternating_order, build_model, reference_twin, write_json
from hf_attn.utils import cache_bytes, format_table

TWINS = {"deepseek_v3": "mla", "llama": "mha"}  # transformers' class -> the hf_attn model whose weights it carries


def build_models(args, max_positions: int) -> tuple[dict, dict]:
    """The models of the comparison (`--models`, default all) in eval mode, and the hf_attn config behind
    each (a twin's is its source's). A twin needs its source model, which is then built too."""
    configs = decode_configs(args.vocab_size, max_positions, args.window)
    names = args.models or [*configs, *(TWINS if args.twins else ())]
    needed = {TWINS.get(name, name) for name in names}
    models = {
        name: build_model(config, args.attn, args.seed).eval() for name, config in configs.items() if name in needed
    }
    for twin, source in TWINS.items():
        if twin in names:
            models[twin] = reference_twin(models[source]).eval()
            configs[twin] = configs[source]
    return {name: models[name] for name in names}, {name: configs[name] for name in names}


def paths_for(name: str, cell: tuple[int, int], args) -> list[str]:
    """The paths a model runs in one (context, batch) cell.

    transformers' twins run dynamic and static only (their plain generate() is the dynamic path), and
    only up to `--twin-max-batch` (DeepseekV3 re-expands every cached latent at every step: at batch
    32 and 8192 tokens a step takes seconds). hf_attn compiles only at `--compile-cells`.
    """
    context, batch = cell
    if name in TWINS:
        return ["dynamic", "static"] if batch <= args.twin_max_batch else []
    paths = ["dynamic", "static", "generate"]
    if f"{batch}x{context}" in args.compile_cells:
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


def run_cell(models, compiled, sources, prompt, cell, args) -> dict:
    """Every model along each of its paths, `--repeats` times, interleaved; medians and token checks."""
    context, batch = cell
    runs = {name: {path: [] for path in paths_for(name, cell, args)} for name in models}
    runs = {name: by_path for name, by_path in runs.items() if by_path}
    for name in runs:  # compile outside the timing: one untimed run per compiled model and cell
        if "compiled" in runs[name]:
            start = time.perf_counter()
            one_run(models[name], compiled[name], "compiled", sources[name], prompt, batch, 2)
            runs[name]["compile_seconds"] = time.perf_counter() - start
    for i in tqdm(range(args.repeats), desc=f"context {context} batch {batch}", leave=False):
        for name in alternating_order(list(runs), i):
            for path in alternating_order([p for p in runs[name] if p in DECODE_PATHS], i):
                step = compiled.get(name) if path == "compiled" else models[name]
                runs[name][path].append(one_run(models[name], step, path, sources[name], prompt, batch, args.steps))
                gc.collect()
    return summarize_cell(runs, batch, args.steps)


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


# (context, batch) -> [(model, reference model, minimum ratio of best-path tokens/s)]: the project's goals
TARGETS = {
    (4096, 1): [("mla", "mha", 1.5)],
    (4096, 8): [("mla", "mha", 2.0)],
    (4096, 32): [("mla", "mha", 2.0)],
    (8192, 8): [("mla", "mha", 2.0), ("performer", "mha", 2.0)],
    (8192, 32): [("mla", "mha", 2.0), ("performer", "mha", 2.0)],
    (8192, 1): [("mla", "deepseek_v3", 8.0), ("performer", "mha", 2.0)],  # Performer's: issue 14
}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=4, help="timed decode steps per run (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per model, path and cell (default 2)")
    parser.add_argument(
        "--compile-cells",
        nargs="*",
        default=["8x2048"],
        metavar="BATCHxCONTEXT",
        help="cells where the compiled path runs too (compiling costs ~1 min per model)",
    )
    parser.add_argument("--models", nargs="+", help="a subset of the models, by name")
    parser.add_argument("--twin-max-batch", type=int, default=8, help="largest batch the twins run (default 8)")
    parser.add_argument("--no-twins", dest="twins", action="store_false", help="leave out DeepseekV3 and Llama")
    parser.add_argument("--window", type=int, default=1024, help="sliding window of the windowed MHA (0: none)")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention kernel, all models")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return_freed_memory()

    models, configs = build_models(args, max(args.contexts) + 1 + args.steps)
    # torch.compile only wraps here; each model compiles on its first call in a compile cell
    compiled = {name: torch.compile(model, dynamic=False) for name, model in models.items() if args.compile_cells}
    print(f"torch {torch.__version__}, {args.threads} threads, float32, attn_implementation={args.attn}")
    print(f"trunk: {DECODE_TRUNK}, vocab {args.vocab_size}; MLA {DECODE_MLA_DIMS}; others head_dim 64")
    print(f"mha_window: MHA with sliding_window {args.window}")
    print(f"{args.steps} timed steps per run, {args.repeats} repeats, models and paths alternating")
    print(
        "default cache of a plain generate(): "
        + ", ".join(f"{n} {default_cache_implementation(m)}" for n, m in models.items())
    )

    generator = torch.Generator().manual_seed(args.seed)
    results, goals = {}, []
    for context in args.contexts:
        prompt = torch.randint(0, args.vocab_size, (1, context), generator=generator)
        sources = prefill_sources(models, prompt, context + 1 + args.steps)
        for batch in args.batches:
            cell = run_cell(models, compiled, sources, prompt, (context, batch), args)
            goals += print_cell(context, batch, cell)
            results[f"{context}x{batch}"] = cell
        del sources
        gc.collect()

    print("\nthe project's goals (decode tokens/s ratios; each model on its fastest path)")
    print(
        format_table(["context x batch", "ratio", "value", "goal", "met"], goals) if goals else "none in these cells"
    )
    if args.json:
        for cell in results.values():
            for m in cell.values():
                for p in DECODE_PATHS:
                    m.get(p, {}).pop("tokens", None)
        write_json(args.json, args, {"cells": results, "goals": goals})


if __name__ == "__main__":
    main()
