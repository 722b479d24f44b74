"""Timing helpers shared by the benchmarks: interleaved runs, their summaries, profiles, JSON output.

Benchmarks here compare hf_attn against transformers' own Llama / DeepseekV3 classes carrying the
*same* weights (through `to_llama` / `to_deepseek_v3`), in one process, with the runs of the models
interleaved. On a shared, noisy CPU that matters more than anything else: a slow spell hits both
models alike, so the per-model medians and their ratio stay meaningful even when absolute times
drift. Every repetition also flips the order of the models, so neither always runs "warm" after
the other.
"""

import json
import statistics
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ...model.configuration_hf_attn import HfAttnConfig
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...utils import HfAttnError, environment, format_table
from ..export.to_transformers import EXPORTERS, export_refusal


def build_model(config: HfAttnConfig, attn_implementation: str = "sdpa", seed: int = 0) -> HfAttnForCausalLM:
    """A float32 `HfAttnForCausalLM` with seeded random weights and the given attention kernel."""
    torch.manual_seed(seed)
    return HfAttnForCausalLM._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)


def reference_twin(model: HfAttnForCausalLM):
    """transformers' own class with `model`'s weights: the first transformers format its design exports to
    that holds this config (`AttentionDesign.export_formats`: DeepseekV3 for MLA, Llama for MHA/GQA/MQA,
    Mistral for those with a window); a design without one is refused, naming it."""
    config = model.config
    formats = [f for f in config.design.export_formats if f in EXPORTERS and export_refusal(config, f) is None]
    if not formats:
        raise HfAttnError(f"attention_type={config.attention_type!r} has no transformers twin to compare with")
    return EXPORTERS[formats[0]](model)


def alternating_order(names: list[str], i: int) -> list[str]:
    """Repetition i runs `names` in order when i is even and in reverse when i is odd."""
    return list(names) if i % 2 == 0 else list(reversed(names))


def time_alternating(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 0, desc: str | None = None
) -> dict[str, list[float]]:
    """Run every function `warmup` times, then `repeats` times each, interleaved, in milliseconds.

    Repetition i runs the functions in `alternating_order`.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in tqdm(range(repeats), desc=desc, leave=False, disable=desc is None):
        for name in alternating_order(names, i):
            start = time.perf_counter()
            fns[name]()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def summarize(samples: list[float]) -> dict:
    """Median, min, max and interquartile range of a list of timings."""
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "iqr": q[2] - q[0],
        "n": len(samples),
        "samples": samples,
    }


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of a[i] / b[i]: runs i of two interleaved functions saw nearly the same machine load,
    so on a noisy machine this is steadier than the ratio of the two medians."""
    return statistics.median(x / y for x, y in zip(a, b))


def write_json(path: str, args, results) -> None:
    """Write `{"args", "environment", "results"}` to `path`."""
    with open(path, "w") as f:
        json.dump({"args": vars(args), "environment": environment(), "results": results}, f, indent=2)
    print(f"wrote {path}")


def profile_alternating(fns: dict[str, Callable[[], object]], steps: int) -> dict[str, dict[str, dict]]:
    """Self CPU time and call count per op, per function, from `steps` profiled calls of each.

    The calls alternate between the functions, one profiler session per call, so load from other
    processes falls on all of them alike (profiling them one after the other does not compare).
    Returns {name: {op: {"self_ms": per call of fn, "calls": per call of fn}}}.
    """
    from torch.profiler import ProfilerActivity, profile

    totals: dict[str, dict[str, list[float]]] = {name: {} for name in fns}
    names = list(fns)
    for i in tqdm(range(steps), desc="profiling", leave=False):
        for name in alternating_order(names, i):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fns[name]()
            for event in prof.key_averages():
                entry = totals[name].setdefault(event.key, [0.0, 0])
                entry[0] += event.self_cpu_time_total / 1e3
                entry[1] += event.count
    return {
        name: {op: {"self_ms": t / steps, "calls": c / steps} for op, (t, c) in ops.items()}
        for name, ops in totals.items()
    }


def profile_table(ops: dict[str, dict], row_limit: int = 15) -> str:
    """The `row_limit` ops with the most self CPU time, from one entry of `profile_alternating`."""
    total = sum(v["self_ms"] for v in ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1]["self_ms"])[:row_limit]
    rows = [[op[:60], v["self_ms"], 100 * v["self_ms"] / total, f"{v['calls']:g}"] for op, v in top]
    table = format_table(["op", "self ms/step", "% self", "calls/step"], rows)
    return f"{table}\ntotal self CPU {total:.1f} ms/step"
