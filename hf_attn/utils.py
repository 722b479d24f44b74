"""Small helpers that the training code and the tools share: records, tables, output folders, environment.

Everything here sits below `hf_attn.train` and `hf_attn.tools` and imports neither.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time

_TRUE = ("1", "ON", "YES", "TRUE")


class HfAttnError(Exception):
    """A problem with the user's input or environment that the project anticipates.

    Command lines print its message as one line (`error: ...`) instead of a traceback, as they do
    for ValueError and OSError.
    """


def flag(name: str) -> str:
    """The command-line flag of an option field: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


def check_options(options, rules: dict) -> None:
    """Refuse option values that break their rule, naming the flag: `rules[field] = (test, what)`.

    `what` completes "must be ..." ("at least 1", "0 or more (0: at the end)"). None values (unset
    options with a derived default) are left alone; NaN fails every test.
    """
    for name, (test, what) in rules.items():
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not test(value)):
            raise ValueError(f"{flag(name)} {value}: must be {what}")


AT_LEAST_ONE = (lambda v: v >= 1, "at least 1")
ABOVE_ZERO = (lambda v: v > 0, "above 0")
NOT_NEGATIVE = (lambda v: v >= 0, "0 or more")


def zero_means(meaning: str) -> tuple:
    """The rule of a count whose 0 has a meaning of its own (`--eval-every 0`: at the end only)."""
    return (lambda v: v >= 0, f"0 or more (0: {meaning})")


# ---------------------------------------------------------------- JSON-lines records


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file (an absent file has none)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a") as f:
        f.write(to_json(record) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(to_json(r) + "\n" for r in records)


def finite_or_none(value):
    """`value` with every NaN or infinite float, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def to_json(value, **kwargs) -> str:
    """`json.dumps` that writes valid JSON only: NaN and infinities become null (JSON has neither).

    Outputs whose number must not be missing check it first (`evaluate_model`, the training loop).
    """
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


# ---------------------------------------------------------------- tables


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain text table; floats get 2 decimals from 10 up, else 3."""
    text = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in text]
    return "\n".join(lines)


def markdown_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A markdown table; `align` has one character per column, 'l' or 'r' (default: all left)."""
    align = align or "l" * len(headers)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(headers) + " |", rule]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


# ---------------------------------------------------------------- output folders


def check_output_dir(path: str, marker: str, overwrite: bool, keep: bool = False) -> bool:
    """Whether `path` must be emptied for a new run; refuses to lose someone's files silently.

    An empty or absent folder is used as it is. A folder that holds a run (it has the `marker`
    file) is kept when `keep` (a resume) and must be emptied when `overwrite`; anything else is
    refused with a `FileExistsError` naming the folder and the flag that would allow it.
    """
    if not os.path.isdir(path) or not os.listdir(path) or keep:
        return False
    is_run = os.path.isfile(os.path.join(path, marker))
    if not overwrite:
        what = "another run" if is_run else "files"
        raise FileExistsError(f"output dir {path!r} already holds {what}; pass --overwrite to replace it")
    if not is_run:
        raise FileExistsError(f"output dir {path!r} is not empty and holds no hf_attn run; refusing to delete it")
    return True


def prepare_output_dir(path: str, marker: str, overwrite: bool, keep: bool = False) -> None:
    """`check_output_dir`, then empty the folder if it must be, and create it."""
    if check_output_dir(path, marker, overwrite, keep):
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)


# ---------------------------------------------------------------- environment


def is_offline() -> bool:
    """Whether the user asked the Hugging Face libraries to stay offline."""
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started (exec'd), in bytes.

    Linux's `getrusage(...).ru_maxrss` is not that: exec keeps the largest resident set the process
    had before (the parent's, copied at fork), so a small child of a 500 MB parent reports 500 MB.
    /proc/self/status's VmHWM belongs to the memory map the exec created; ru_maxrss is the fallback
    where there is no /proc (it is in KiB on Linux, in bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def environment() -> dict:
    """What a reader needs to judge a number: library versions, machine, threads, and the git commit."""
    import accelerate
    import datasets
    import tokenizers
    import torch
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain", "hf_attn"], capture_output=True, text=True).stdout
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
        "hf_attn_uncommitted_changes": dirty,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# ---------------------------------------------------------------- caches and weights


def cache_tensors(cache) -> list:
    """The tensors a transformers cache holds, every layer together.

    Attention layers (full, sliding-window, static) hold `keys` and `values`; linear-attention layers
    (Performer's constant state) hold `recurrent_states` and `conv_states`, dicts of tensors or None.
    """
    tensors = []
    for layer in cache.layers:
        tensors += [getattr(layer, name, None) for name in ("keys", "values")]
        for name in ("recurrent_states", "conv_states"):
            tensors += list(getattr(layer, name, {}).values())
    return [t for t in tensors if t is not None and hasattr(t, "nbytes")]


def cache_bytes(cache) -> int:
    """Bytes a transformers cache holds: keys and values, or linear-attention states, of every layer."""
    return sum(t.nbytes for t in cache_tensors(cache))


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise a ValueError naming `path` if it is not a complete safetensors file.

    safetensors' own message for a truncated file ("incomplete metadata") names no file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass  # opening reads the header and checks that the file covers every tensor's bytes
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt: {e})") from None
