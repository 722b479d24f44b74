"""The main job under two recipes: every design's quality, and the seconds a training step costs.

Two `hf-attn-compare` runs at the same token budget (the old recipe's and the new one's, each a folder
with results.json and compare_args.json) are read side by side, per design and seed. The time per step
is not taken from the two runs, which ran at different times on a shared machine: it is measured here,
in one process, with the two optimizers' training steps interleaved on copies of the same model
(`timing.time_alternating`), and reported as the median of the paired ratios.

`scripts/compare_recipes.py` is the command line; its output is in docs/recipe/.
"""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import torch

from ...model.configuration_hf_attn import HfAttnConfig
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...train.optim import make_optimizer
from ...utils import HfAttnError, markdown_table
from ..comparison.stats import REFERENCE
from .timing import paired_ratio, summarize, time_alternating
from .training import make_train_step

BPC_GOAL = 0.05  # bits/char the reference design must gain under the new recipe
STEP_TIME_GOAL = 1.05  # at most this ratio of seconds per step, new recipe over old


def read_run(folder: str) -> dict:
    """A comparison folder's results.json and compare_args.json, or one line naming what is missing."""
    loaded = {}
    for name in ("results.json", "compare_args.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise HfAttnError(f"{path}: not found; give the folder of a finished hf-attn-compare run")
        with open(path) as f:
            loaded[name] = json.load(f)
    return {"runs": loaded["results.json"]["runs"], "args": loaded["compare_args.json"]}


def recipe_of(args: dict) -> dict:
    """The training options that make up a recipe (what differs between the two runs is among these)."""
    names = ("optimizer", "lr", "lr_schedule", "min_lr_ratio", "warmup_steps", "decay_fraction", "weight_decay",
             "beta2", "muon_lr", "muon_weight_decay", "muon_momentum", "muon_adjust_lr", "batch_size", "block_size",
             "max_tokens", "max_grad_norm")  # fmt: skip
    return {name: args["train"].get(name) for name in names}


def check_same_budget(old: dict, new: dict) -> None:
    """Both runs must train on the same tokens in the same blocks: otherwise it is not one comparison."""
    for name in ("max_tokens", "block_size", "batch_size"):
        if old["args"]["train"][name] != new["args"]["train"][name]:
            raise HfAttnError(
                f"{name}: {old['args']['train'][name]} in the old run, {new['args']['train'][name]} in the new one; "
                "compare runs at the same budget"
            )


def quality_rows(old: dict, new: dict) -> list[dict]:
    """Per (design, seed) present in both runs: bits/char under each recipe and the change."""
    by_key = {(r["variant"], r["seed"]): r for r in old["runs"] if r["status"] == "ok"}
    rows = []
    for run in new["runs"]:
        before = by_key.get((run["variant"], run["seed"]))
        if run["status"] != "ok" or before is None:
            continue
        rows.append(
            {
                "variant": run["variant"],
                "seed": run["seed"],
                "old_bits_per_char": before["val_bits_per_char"],
                "new_bits_per_char": run["val_bits_per_char"],
                "change": run["val_bits_per_char"] - before["val_bits_per_char"],
                "old_far_position_loss": before.get("far_position_loss"),
                "new_far_position_loss": run.get("far_position_loss"),
                "old_train_tokens_per_s": before["train_tokens_per_s"],
                "new_train_tokens_per_s": run["train_tokens_per_s"],
            }
        )
    return rows


def step_times(config: dict, recipes: dict[str, dict], repeats: int, warmup: int = 3, seed: int = 0) -> dict:
    """Seconds per training step of the same model (same weights, same batch) under each recipe's optimizer,
    interleaved; {"samples_ms": {name: summary}, "ratio": new over old (median of paired ratios)}."""
    torch.manual_seed(seed)
    base = HfAttnForCausalLM(HfAttnConfig(**config)).train()
    train = next(iter(recipes.values()))
    batch = torch.randint(0, base.config.vocab_size, (train["batch_size"], train["block_size"]))
    fns = {}
    for name, recipe in recipes.items():
        model = copy.deepcopy(base)
        optimizer = make_optimizer(model, SimpleNamespace(**recipe))
        fns[name] = make_train_step(model, batch, optimizer=optimizer, max_grad_norm=recipe["max_grad_norm"])
    times = time_alternating(fns, repeats, warmup=warmup, desc="step time")
    old, new = list(recipes)
    return {
        "repeats": repeats,
        "samples_ms": {name: summarize(samples) for name, samples in times.items()},
        "ratio": paired_ratio(times[new], times[old]),
    }


def compare_recipes(old_dir: str, new_dir: str, repeats: int) -> dict:
    """Both runs' quality per design and seed, and the reference design's step time under both recipes."""
    old, new = read_run(old_dir), read_run(new_dir)
    check_same_budget(old, new)
    reference = next((r for r in new["runs"] if r["variant"] == REFERENCE and r["status"] == "ok"), None)
    if reference is None:
        raise HfAttnError(f"{new_dir}: no finished {REFERENCE} run to time")
    recipes = {"old": recipe_of(old["args"]), "new": recipe_of(new["args"])}
    return {
        "old_dir": old_dir,
        "new_dir": new_dir,
        "recipes": recipes,
        "rows": quality_rows(old, new),
        "step_time": step_times(reference["config"], recipes, repeats),
    }


def goals(result: dict) -> list[str]:
    """The two goals for the main job, met or missed from the measured numbers."""
    ref = [r for r in result["rows"] if r["variant"] == REFERENCE]
    gain = -sum(r["change"] for r in ref) / len(ref) if ref else float("nan")
    ratio = result["step_time"]["ratio"]
    return [
        f"- {REFERENCE} improves by at least {BPC_GOAL} bits/char: {'met' if gain >= BPC_GOAL else 'missed'} "
        f"({gain:+.4f} bits/char, mean over {len(ref)} seed(s))",
        f"- time per step within {100 * (STEP_TIME_GOAL - 1):.0f}% of the old recipe's: "
        f"{'met' if ratio <= STEP_TIME_GOAL else 'missed'} (new / old = {ratio:.3f}, median of "
        f"{result['step_time']['repeats']} paired steps)",
    ]


def compare_markdown(result: dict, command: str, env: dict) -> str:
    """docs/recipe/compare.md: the recipes, the table per design and seed, the step times, the goals."""
    differ = {k: (v, result["recipes"]["new"][k]) for k, v in result["recipes"]["old"].items()}
    changed = [f"`{k}` {a} → {b}" for k, (a, b) in differ.items() if a != b]
    rows = [
        [r["variant"], r["seed"], f"{r['old_bits_per_char']:.4f}", f"{r['new_bits_per_char']:.4f}",
         f"{r['change']:+.4f}", r["old_train_tokens_per_s"], r["new_train_tokens_per_s"]]
        for r in result["rows"]
    ]  # fmt: skip
    times = result["step_time"]["samples_ms"]
    seeds = sorted({r["seed"] for r in result["rows"]})
    return "\n".join(
        [
            "# The main job under the old and the new recipe",
            "",
            f"Command: `{command}`  ",
            f"Machine: {env['machine']}, {env['cpu_count']} CPUs, torch {env['torch']}, commit {env['git_commit']}, "
            f"{env['time']}.",
            "",
            f"Runs: `{result['old_dir']}` (old recipe) and `{result['new_dir']}` (new recipe), both `hf-attn-compare` "
            f"at {result['recipes']['old']['max_tokens']:,} training tokens in blocks of "
            f"{result['recipes']['old']['block_size']} (batch {result['recipes']['old']['batch_size']}). What "
            "changed: "
            + ", ".join(changed)
            + f". Seed(s): {', '.join(map(str, seeds))}"
            + (
                " (one seed: no interval; a difference below about 0.02 bits/char is within what a seed moves)."
                if len(seeds) == 1
                else "."
            ),  # fmt: skip
            "",
            markdown_table(
                ["variant", "seed", "old bits/char", "new bits/char", "change", "old train tok/s", "new train tok/s"],
                rows,
                "lrrrrrr",
            ),
            "",
            "The two runs' tokens/s were measured at different times on a shared machine; the time per step below "
            f"is measured in one process instead: {REFERENCE}'s training step (forward, backward, clipping, "
            f"optimizer) with each recipe's optimizer, interleaved, on copies of the same model and batch: "
            f"old {times['old']['median']:.1f} ms, new {times['new']['median']:.1f} ms (medians), paired ratio "
            f"{result['step_time']['ratio']:.3f}.",
            "",
            "Goals:",
            "",
            *goals(result),
            "",
        ]
    )
