"""A recipe for short CPU runs on Tiny Shakespeare: an ablation one change at a time, and a race with nanoGPT.

Every run is a separate `python -m hf_attn.cli.train` process (nanoGPT's its own `train.py`), so wall
time and peak resident memory are the process's own (`os.wait4`'s rusage). Each hf_attn run is sized to
a budget of training seconds: a short probe of the same shape measures the seconds per step under the
current load, the run gets `budget / step time` steps (so its schedule ends where the budget does),
and `--max-time` only guards against a machine that slows down mid-run. Validation is the last 10%
of the characters (nanoGPT's split), scored as bits per character over the whole split.

`scripts/recipe_ablation.py` and `scripts/race_nanogpt.py` are the command lines; their output is in
docs/recipe/.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ...utils import read_jsonl

# docs/training.md's 60 s run (commit b735109): a 2048-token BPE and a 128-wide, 4-layer, 4-head MHA model.
MODEL_OVERRIDES = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 344}
OLD_RECIPE = {
    "--train-tokenizer-vocab": "2048",
    "--block-size": "128",
    "--batch-size": "16",
    "--lr": "4e-3",
    "--min-lr-ratio": "0.5",
    "--warmup-steps": "20",
}
# What every run shares: the data, no checkpoints, one evaluation at the end (on the whole split).
FIXED_FLAGS = ["--split", "chars", "--eval-every", "0", "--save-every", "0", "--tracker", "none", "--no-progress"]
# Flags that change the seconds a step takes: runs that share them share a probe.
COST_FLAGS = ("--train-tokenizer-vocab", "--block-size", "--batch-size", "--grad-accum", "--optimizer")
PROBE_STEPS = 14  # the first 4 are not counted (warm-up of the allocator and the threads)
# The race judges "within the budget": its steps fill 95% of it, so that a probe that measured a step a
# little fast does not carry the run past the limit (the ablation's rows fill the whole budget alike).
RACE_FILL = 0.95
GAIN = 0.01  # bits/char a change must gain to be kept (one seed: smaller gains are within its noise)


@dataclass
class Recipe:
    """hf-attn-train flags (besides the data and FIXED_FLAGS) and HfAttnConfig overrides."""

    flags: dict = field(default_factory=lambda: dict(OLD_RECIPE))
    overrides: dict = field(default_factory=lambda: dict(MODEL_OVERRIDES))

    def with_change(self, change: Change) -> Recipe:
        return Recipe({**self.flags, **change.flags}, {**self.overrides, **change.overrides})

    def argv(self) -> list[str]:
        overrides = ",".join(f"{k}={json.dumps(v)}" for k, v in self.overrides.items())
        return [*(x for kv in self.flags.items() for x in kv), "--config-overrides", overrides]

    def cost_key(self) -> tuple:
        return tuple(self.flags.get(f) for f in COST_FLAGS) + (json.dumps(self.overrides, sort_keys=True),)


@dataclass
class Change:
    name: str
    why: str
    flags: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)


# The ablation, in order; each is tried on the best recipe so far and kept only if it gains GAIN.
CHANGES = [
    Change(
        "optimizer muon", "Muon on the decoder matrices (torch.optim.Muon), AdamW on the rest", {"--optimizer": "muon"}
    ),
    Change("muon lr 0.04", "twice torch's example rate for the Muon matrices", {"--muon-lr": "0.04"}),
    Change(
        "wsd schedule",
        "warm-up, stable, linear decay to 0 over the last 30% (was: cosine to lr * 0.5)",
        {"--lr-schedule": "wsd", "--decay-fraction": "0.3", "--min-lr-ratio": "0.0"},
    ),
    Change(
        "adamw lr 8e-3", "twice the AdamW rate (embeddings, head, norms; all weights without muon)", {"--lr": "8e-3"}
    ),
    Change("batch 32", "twice the sequences per step (half the steps in the same time)", {"--batch-size": "32"}),
    Change("batch 8", "half the sequences per step (twice the steps)", {"--batch-size": "8"}),
    Change(
        "width 192",
        "a wider model: hidden 192, MLP 512 (2.3x the parameters, fewer steps in the same time)",
        overrides={"hidden_size": 192, "intermediate_size": 512},
    ),
    Change(
        "vocab 1024", "a smaller BPE (shorter tokens: more tokens per character)", {"--train-tokenizer-vocab": "1024"}
    ),
    Change("zero-init", "o_proj and down_proj start at zero", overrides={"zero_init_output_projections": True}),
    Change("warmup 50", "a longer warm-up", {"--warmup-steps": "50"}),
]


# Runs a command as its own child and writes the child's peak resident KiB (wait4's ru_maxrss) to argv[1].
# A child's ru_maxrss starts at the resident set of the process that forked it (Linux keeps it through
# exec), so the command is forked from this small launcher, not from the benchmark's own large process.
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_process(cmd: list[str], cwd: str | None = None, env: dict | None = None) -> dict:
    """Run `cmd`; its exit code, output, wall seconds, peak resident bytes and the load average around it."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak_kib")
        with open(os.path.join(tmp, "out"), "w+") as out, open(os.path.join(tmp, "err"), "w+") as err:
            launched = [sys.executable, "-c", LAUNCHER, peak_file, *cmd]
            returncode = subprocess.run(launched, cwd=cwd, env=env, stdout=out, stderr=err, text=True).returncode
            wall = time.perf_counter() - start
            out.seek(0), err.seek(0)
            stdout, stderr = out.read(), err.read()
        if returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({returncode}):\n{stderr[-3000:]}")
        with open(peak_file) as f:
            peak_bytes = int(f.read()) * 1024  # Linux reports KiB
    return {
        "stdout": stdout,
        "stderr": stderr,
        "wall_s": wall,
        "peak_rss_bytes": peak_bytes,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def hf_attn_command(text_file: str, recipe: Recipe, output_dir: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "hf_attn.cli.train", "--text-files", text_file, *FIXED_FLAGS,
            *recipe.argv(), "--output-dir", output_dir, *extra]  # fmt: skip


def probe_step_time(text_file: str, recipe: Recipe, workdir: str) -> float:
    """Median seconds per optimizer step of `recipe`, from a short run of the same shape."""
    out = os.path.join(workdir, f"probe-{abs(hash(recipe.cost_key()))}")
    extra = ["--max-steps", str(PROBE_STEPS), "--log-every", "1", "--eval-batches", "1", "--sample-tokens", "0"]
    run_process(hf_attn_command(text_file, recipe, out, extra))
    times = [r["step_time_s"] for r in read_jsonl(os.path.join(out, "train_log.jsonl"))[4:]]
    return statistics.median(times)


def run_hf_attn(
    text_file: str, recipe: Recipe, budget_s: float, step_time_s: float, workdir: str, name: str, fill: float = 1.0
) -> dict:
    """One run of `recipe` with as many steps as `fill * budget_s` training seconds hold; its numbers."""
    steps = max(1, math.floor(fill * budget_s / step_time_s))
    out = os.path.join(workdir, name.replace(" ", "_"))
    guard = budget_s * 1.3 + 20  # --max-time counts from the start, tokenizer training and packing included
    result = run_process(
        hf_attn_command(text_file, recipe, out, ["--max-steps", str(steps), "--max-time", str(guard)])
    )
    summary = json.loads(result["stdout"][result["stdout"].index("{") :])
    final = read_jsonl(os.path.join(out, "metrics.jsonl"))[-1]
    return {
        "name": name,
        "argv": recipe.argv(),
        "planned_steps": steps,
        "steps": summary["steps"],
        "probe_step_time_s": step_time_s,
        "train_s": final["elapsed_s"],
        "val_bits_per_char": summary["val_bits_per_char"],
        "params": summary["params"],
        "tokens": summary["tokens"],
        **{k: result[k] for k in ("wall_s", "peak_rss_bytes", "load_before", "load_after")},
    }


# ---------------------------------------------------------------- the ablation


class StepTimes:
    """Probed seconds per step, one probe per shape (`Recipe.cost_key`)."""

    def __init__(self, text_file: str, workdir: str):
        self.text_file, self.workdir, self.known = text_file, workdir, {}

    def __call__(self, recipe: Recipe) -> float:
        key = recipe.cost_key()
        if key not in self.known:
            self.known[key] = probe_step_time(self.text_file, recipe, self.workdir)
        return self.known[key]


def run_ablation(text_file: str, budget_s: float, workdir: str, changes: list[Change] = CHANGES) -> dict:
    """The old recipe, then each change on the best recipe so far, kept if it gains `GAIN` bits/char."""
    step_time = StepTimes(text_file, workdir)
    best = Recipe()
    rows = [run_hf_attn(text_file, best, budget_s, step_time(best), workdir, "old recipe (docs/training.md)")]
    rows[0].update(change="—", why="the 60 s run of docs/training.md", kept=True)
    best_bpc = rows[0]["val_bits_per_char"]
    for change in changes:
        trial = best.with_change(change)
        row = run_hf_attn(text_file, trial, budget_s, step_time(trial), workdir, change.name)
        gain = best_bpc - row["val_bits_per_char"]
        row.update(change=change.name, why=change.why, gain=gain, kept=gain >= GAIN)
        print(
            f"{change.name}: {row['val_bits_per_char']:.4f} bits/char ({gain:+.4f}), kept: {row['kept']}", flush=True
        )
        rows.append(row)
        if row["kept"]:
            best, best_bpc = trial, row["val_bits_per_char"]
    return {
        "budget_s": budget_s,
        "gain_threshold": GAIN,
        "rows": rows,
        "recipe": {"flags": best.flags, "overrides": best.overrides},
    }


def ablation_markdown(result: dict, command: str, env: dict) -> str:
    """docs/recipe/ablation.md: how it was run, then one row per change."""
    from ...utils import markdown_table

    headers = ["change", "kept", "val bits/char", "gain", "steps", "train s", "wall s", "peak RSS MB", "load"]
    rows = [
        [r["change"], "yes" if r["kept"] else "no", f"{r['val_bits_per_char']:.4f}",
         "—" if "gain" not in r else f"{r['gain']:+.4f}", f"{r['steps']}/{r['planned_steps']}", r["train_s"],
         r["wall_s"], r["peak_rss_bytes"] / 1e6, f"{r['load_before']:.2f}→{r['load_after']:.2f}"]
        for r in result["rows"]
    ]  # fmt: skip
    best = Recipe(**result["recipe"])
    lines = [
        "# Ablation: one change at a time, each on the best recipe so far",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env['machine']}, {env['cpu_count']} CPUs, torch {env['torch']}, commit {env['git_commit']}, "
        f"{env['time']}. Training budget per run: {result['budget_s']:g} s of training steps (steps sized by a "
        f"probe of the same shape). A change is kept when it gains at least {result['gain_threshold']} bits/char "
        "(one seed). Load: the 1-minute load average before and after the run.",
        "",
        markdown_table(headers, rows, "llrrrrrrl"),
        "",
        "What each change is:",
        "",
        *(f"- **{r['change']}**: {r['why']}" for r in result["rows"]),
        "",
        "The recipe that came out (hf-attn-train flags besides the data):",
        "",
        "```",
        " ".join(best.argv()),
        "```",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the race with nanoGPT

# nanoGPT's README, "I only have a macbook": its CPU recipe, run as it is (out_dir aside). The final
# checkpoint is always saved so that it can be scored on the whole validation split.
NANOGPT_FLAGS = [
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
    "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0",
    "--always_save_checkpoint=True",
]  # fmt: skip
NANOGPT_ITERS = 2000  # its README's CPU recipe; --max_iters and --lr_decay_iters
# Scores nanoGPT's checkpoint with nanoGPT's own model code (its model.py, imported from its folder):
# windows of its context over the whole val.bin, every position predicted once.
NANOGPT_SCORE = """
import math, sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from model import GPT, GPTConfig
ckpt = torch.load(sys.argv[2], map_location="cpu", weights_only=True)  # tensors and plain values only
state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
model = GPT(GPTConfig(**ckpt["model_args"])); model.load_state_dict(state); model.eval()
data = torch.from_numpy(np.fromfile(sys.argv[3], dtype=np.uint16).astype(np.int64))
T = ckpt["model_args"]["block_size"]
starts = torch.arange(0, len(data) - T - 1, T)
total, count = 0.0, 0
with torch.no_grad():
    for batch in starts.split(256):
        x = torch.stack([data[i : i + T] for i in batch]); y = torch.stack([data[i + 1 : i + 1 + T] for i in batch])
        _, loss = model(x, y)
        total += loss.item() * y.numel(); count += y.numel()
print(total / count / math.log(2))
"""


def run_nanogpt(nanogpt_dir: str, text_file: str, workdir: str, iters: int = NANOGPT_ITERS) -> dict:
    """nanoGPT's CPU recipe on a copy of its folder: prepare (char-level ids), train, score the final model."""
    import shutil

    copy = os.path.join(workdir, "nanogpt")
    shutil.copytree(nanogpt_dir, copy, ignore=shutil.ignore_patterns(".git", "out*"))
    data = os.path.join(copy, "data", "shakespeare_char")
    shutil.copy(text_file, os.path.join(data, "input.txt"))  # prepare.py downloads only when it is missing
    prepare = run_process([sys.executable, "prepare.py"], cwd=data)
    out_dir = os.path.join(workdir, "nanogpt-out")
    schedule = [f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={min(250, iters)}"]
    result = run_process([sys.executable, "train.py", *NANOGPT_FLAGS, *schedule, f"--out_dir={out_dir}"], cwd=copy)
    evals = [line for line in result["stdout"].splitlines() if line.startswith("step ")]
    last = evals[-1]  # "step 2000: train loss 1.7..., val loss 1.8..."
    val_nats = float(last.rsplit("val loss", 1)[1])
    score = run_process(
        [sys.executable, "-c", NANOGPT_SCORE, copy, os.path.join(out_dir, "ckpt.pt"), os.path.join(data, "val.bin")]
    )
    iter_ms = [
        float(line.split("time ")[1].split("ms")[0])
        for line in result["stdout"].splitlines()
        if line.startswith("iter ")
    ]
    return {
        "name": "nanoGPT CPU recipe",
        "steps": iters,
        "tokens": iters * 12 * 64,
        "val_bits_per_char": float(score["stdout"].split()[-1]),  # after its "number of parameters" line
        "own_estimate_bits_per_char": val_nats / math.log(2),
        "own_estimate": last,
        "train_s": sum(iter_ms) / 1000,  # its own per-iteration times (evaluation and saves included)
        "prepare_wall_s": prepare["wall_s"],
        **{k: result[k] for k in ("wall_s", "peak_rss_bytes", "load_before", "load_after")},
    }


# What each side imports before it reads any data; hf_attn's model classes alone (transformers' PreTrainedModel
# and what it imports) are the floor of any hf_attn process, its data pipeline (datasets) comes on top.
IMPORTED_STACKS = (
    ("hf_attn", "hf_attn.cli.train"),
    ("hf_attn models only", "hf_attn.model"),
    ("nanoGPT", "numpy, torch"),
)


def import_rss_bytes() -> dict:
    """Peak resident bytes of a process that only imports each side's stack: what is paid before any data."""
    return {
        name: run_process([sys.executable, "-c", f"import {modules}"])["peak_rss_bytes"]
        for name, modules in IMPORTED_STACKS
    }


def race(
    nanogpt_dir: str, text_file: str, recipe: Recipe, budget_s: float, workdir: str, iters: int = NANOGPT_ITERS
) -> dict:
    """hf_attn's recipe, then nanoGPT's CPU recipe, on the same machine in one run; then the import cost."""
    step_time = probe_step_time(text_file, recipe, workdir)
    ours = run_hf_attn(text_file, recipe, budget_s, step_time, workdir, "hf_attn recipe", fill=RACE_FILL)
    ours["train_s_note"] = "training steps only (elapsed_s)"
    theirs = run_nanogpt(nanogpt_dir, text_file, workdir, iters)
    return {"budget_s": budget_s, "runs": [ours, theirs], "import_rss_bytes": import_rss_bytes()}


def race_markdown(result: dict, command: str, env: dict) -> str:
    """docs/recipe/race*.md: the two runs side by side and each goal of issue 25 marked met or missed."""
    from ...utils import markdown_table

    ours, theirs = result["runs"]
    headers = ["run", "val bits/char", "steps", "tokens", "train s", "wall s", "peak RSS MB", "load"]
    rows = [
        [r["name"], f"{r['val_bits_per_char']:.4f}", r["steps"], f"{r['tokens']:,}", r["train_s"], r["wall_s"],
         r["peak_rss_bytes"] / 1e6, f"{r['load_before']:.2f}→{r['load_after']:.2f}"]
        for r in result["runs"]
    ]  # fmt: skip
    ratio = ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
    imports = {k: v / 1e6 for k, v in result["import_rss_bytes"].items()}
    lines = [
        f"# Race: hf_attn's recipe ({result['budget_s']:g} s of training) and nanoGPT's CPU recipe",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env['machine']}, {env['cpu_count']} CPUs, torch {env['torch']}, commit {env['git_commit']}, "
        f"{env['time']}. One after the other in one run, same split (the last 10% of the characters), "
        "bits/char over the whole validation split for both; load: the 1-minute load average before → after.",
        "",
        markdown_table(headers, rows, "lrrrrrrl"),
        "",
        f"nanoGPT's own estimate (20 random batches): `{theirs['own_estimate']}` = "
        f"{theirs['own_estimate_bits_per_char']:.4f} bits/char. Its train s is the sum of its per-iteration times "
        "(its evaluations every 250 iterations included); hf_attn's is its training steps alone. Wall s is each "
        "training process from start to exit (hf_attn: imports, BPE training, packing, training, the final "
        f"evaluation, saving; nanoGPT: imports, training, evaluations, saves; its prepare.py took "
        f"{theirs['prepare_wall_s']:.1f} s more).",
        "",
        "Peak RSS of a process that only imports each stack: "
        + ", ".join(
            f"{name} ({modules}) {imports[name]:.0f} MB" for name, modules in IMPORTED_STACKS if name in imports
        )
        + ".",
        "",
        "Goals (issue 25):",
        "",
        *goal_lines(result["budget_s"], ours, ratio),
        "",
        "hf_attn's flags: `" + " ".join(ours["argv"]) + "`",
    ]
    return "\n".join(lines) + "\n"


def goal_lines(budget_s: float, ours: dict, memory_ratio: float) -> list[str]:
    """Each goal, met or missed from the measured numbers; a goal of another budget is left to its own run."""
    lines = []
    for low, seconds, target in ((0, 60, 2.45), (60, 600, 2.20)):
        goal = f"- <= {target} bits/char within {seconds} s of training: "
        if not low < budget_s <= seconds:
            lines.append(goal + f"not judged here (a run with --budget {seconds} judges it)")
            continue
        met = ours["val_bits_per_char"] <= target and ours["train_s"] <= seconds
        lines.append(
            goal + f"{'met' if met else 'missed'} ({ours['val_bits_per_char']:.4f} in {ours['train_s']:.1f} s)"
        )
    verdict = "met" if memory_ratio <= 1.5 else "missed"
    lines.append(f"- peak memory <= 1.5x nanoGPT's: {verdict} ({memory_ratio:.2f}x)")
    return lines


# ---------------------------------------------------------------- options of the two scripts


@dataclass
class AblationOptions:
    text_file: str | None = field(
        default=None, metadata={"help": "Tiny Shakespeare (input.txt of char-rnn / nanoGPT; see docs/recipe)"}
    )
    budget: float = field(default=60.0, metadata={"help": "seconds of training steps per run"})
    changes: list[str] | None = field(
        default=None,
        metadata={"help": f"only these changes, in this order (default: all of {[c.name for c in CHANGES]})"},
    )
    workdir: str | None = field(default=None, metadata={"help": "where the runs go (default: a temporary folder)"})
    json: str = field(default="docs/recipe/ablation.json", metadata={"help": "write the results here"})
    markdown: str = field(default="docs/recipe/ablation.md", metadata={"help": "write the table here"})

    def __post_init__(self):
        check_text_file(self.text_file)


@dataclass
class RaceOptions:
    text_file: str | None = field(
        default=None, metadata={"help": "Tiny Shakespeare (input.txt of char-rnn / nanoGPT; see docs/recipe)"}
    )
    nanogpt_dir: str | None = field(
        default=None, metadata={"help": "a checkout of github.com/karpathy/nanoGPT (copied, never changed)"}
    )
    recipe: str = field(
        default="docs/recipe/ablation.json",
        metadata={"help": "the ablation's output, whose final recipe hf_attn runs; 'old': docs/training.md's"},
    )
    overrides: str | None = field(
        default=None,
        metadata={
            "help": "HfAttnConfig fields on top of the recipe's, e.g. a model sized for a longer budget: "
            "'hidden_size=256,intermediate_size=688' (hf-attn-train's --config-overrides syntax)"
        },
    )
    flags: str | None = field(
        default=None,
        metadata={
            "help": "hf-attn-train flags with their values on top of the recipe's, e.g. '--muon-weight-decay 0.1'"
        },
    )
    budget: float = field(default=60.0, metadata={"help": "hf_attn's seconds of training steps"})
    nanogpt_iters: int = field(default=NANOGPT_ITERS, metadata={"help": "nanoGPT's iterations (its CPU recipe: 2000)"})
    workdir: str | None = field(default=None, metadata={"help": "where the runs go (default: a temporary folder)"})
    json: str = field(default="docs/recipe/race.json", metadata={"help": "write the results here"})
    markdown: str = field(default="docs/recipe/race.md", metadata={"help": "write the table here"})

    def __post_init__(self):
        check_text_file(self.text_file)
        if self.nanogpt_dir is None or not os.path.isfile(os.path.join(self.nanogpt_dir, "train.py")):
            raise ValueError(f"--nanogpt-dir {self.nanogpt_dir!r}: not a nanoGPT checkout (no train.py in it)")


def check_text_file(path: str | None) -> None:
    if path is None or not os.path.isfile(path):
        raise ValueError(
            f"text file {path!r}: give Tiny Shakespeare's input.txt (docs/recipe/README.md says where to get it)"
        )


def load_recipe(path: str, overrides: str | None = None, flags: str | None = None) -> Recipe:
    """The final recipe of an ablation's JSON output, or the old recipe for 'old'; `overrides` (k=v,...)
    replace or add HfAttnConfig fields, `flags` ('--flag value ...') hf-attn-train flags."""
    import shlex

    from ...train.options import parse_overrides

    words = shlex.split(flags or "")
    if len(words) % 2 or not all(w.startswith("--") for w in words[::2]):
        raise ValueError(f"--flags {flags!r}: give pairs of a flag and its value, e.g. '--muon-weight-decay 0.1'")

    if path == "old":
        recipe = Recipe()
    else:
        with open(path) as f:
            recipe = Recipe(**json.load(f)["results"]["recipe"])
    extra = Change("given", "", dict(zip(words[::2], words[1::2])), parse_overrides(overrides or "", "--overrides"))
    return recipe.with_change(extra)


def chosen_changes(names: list[str] | None) -> list[Change]:
    """The changes named (in that order), or all of `CHANGES`; an unknown name is refused."""
    if names is None:
        return list(CHANGES)
    known = {c.name: c for c in CHANGES}
    if unknown := [n for n in names if n not in known]:
        raise ValueError(f"--changes: {unknown} are not among {list(known)}")
    return [known[n] for n in names]


def write_outputs(options, result: dict, markdown: str) -> None:
    from ...utils import environment

    os.makedirs(os.path.dirname(options.json) or ".", exist_ok=True)
    with open(options.json, "w") as f:
        json.dump({"args": vars(options), "environment": environment(), "results": result}, f, indent=2)
    with open(options.markdown, "w") as f:
        f.write(markdown)
    print(f"wrote {options.json} and {options.markdown}")
