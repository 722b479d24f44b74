"""Benchmark tokenizing and packing, and the tokenizer's characters per token.

Times `pack_splits` on the default corpus and on the default corpus repeated to `target_chars`
characters, with num_proc=1 and 2 (best of `repeats` runs, wall time), and prints characters per
token of the tokenizer on the default corpus's validation split and on each `extra_text` file. No
GPT-2 vocabulary ships in any installed package, so the baseline for comparison is bytes (1.0
characters per token on ASCII text). `scripts/bench_data.py` is the command line.
"""

import os
import time
from dataclasses import dataclass, field

import datasets
from transformers import AutoTokenizer

from ...train.data import CorpusSpec, load_text_splits, pack_splits
from ...train.tokenizer import chars_per_token


@dataclass
class DataBenchOptions:
    tokenizer: str = field(default="tokenizer", metadata={"help": "tokenizer folder or Hub id"})
    block_size: int = field(default=256, metadata={"help": "tokens per packed block"})
    target_chars: int = field(default=5_000_000, metadata={"help": "characters of the repeated corpus"})
    repeats: int = field(default=3, metadata={"help": "runs per corpus and num_proc (the best is reported)"})
    extra_text: list[str] = field(default_factory=list, metadata={"help": "text files to measure chars/token on"})


def repeat_to(splits: datasets.DatasetDict, target_chars: int) -> datasets.DatasetDict:
    """The documents of `splits`, repeated in order until the total reaches target_chars."""
    out = {}
    total = sum(len(t) for s in splits.values() for t in s["text"])
    for name, ds in splits.items():
        want = round(target_chars * sum(len(t) for t in ds["text"]) / total)
        docs, n = [], 0
        while n < want:
            for t in ds["text"]:
                docs.append(t[: want - n])
                n += len(docs[-1])
                if n >= want:
                    break
        out[name] = datasets.Dataset.from_dict({"text": docs})
    return datasets.DatasetDict(out)


def time_packing(label: str, splits: datasets.DatasetDict, tokenizer, options: DataBenchOptions) -> None:
    """Best wall time of `pack_splits` on `splits` with num_proc 1 and 2, printed with its throughput."""
    n_chars = sum(len(t) for s in splits.values() for t in s["text"])
    for num_proc in (1, 2):
        times = []
        for _ in range(options.repeats):
            t0 = time.perf_counter()
            packed = pack_splits(splits, tokenizer, options.block_size, num_proc=num_proc)
            times.append(time.perf_counter() - t0)
        tokens = sum(s["tokens"] for s in packed.stats.values())
        print(
            f"tokenize+pack {label} ({n_chars:,} chars, {tokens:,} tokens), num_proc={num_proc}: "
            f"best {min(times):.2f} s of {options.repeats} ({n_chars / min(times) / 1e6:.2f} M chars/s)"
        )


def print_chars_per_token(tokenizer, default: datasets.DatasetDict, extra_text: list[str]) -> None:
    print("characters per token (no special tokens; bytes baseline = 1.00 on ASCII):")
    c, t = chars_per_token(tokenizer, default["validation"]["text"])
    print(f"  default corpus, validation split: {c:,} chars / {t:,} tokens = {c / t:.3f}")
    c, t = chars_per_token(tokenizer, default["train"]["text"])
    print(f"  default corpus, train split:      {c:,} chars / {t:,} tokens = {c / t:.3f}")
    for path in extra_text:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        c, t = chars_per_token(tokenizer, [text])
        print(f"  {os.path.basename(path)}: {c:,} chars / {t:,} tokens = {c / t:.3f}")


def run_data_benchmark(options: DataBenchOptions) -> None:
    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(options.tokenizer)
    print(f"machine: {os.cpu_count()} CPU cores; tokenizer {options.tokenizer} ({len(tokenizer)} tokens)")
    t0 = time.perf_counter()
    default = load_text_splits(CorpusSpec())
    print(f"load + split default corpus: {time.perf_counter() - t0:.2f} s")
    time_packing("default corpus", default, tokenizer, options)
    repeated = repeat_to(default, options.target_chars)
    time_packing(f"default corpus repeated to {options.target_chars:,} chars", repeated, tokenizer, options)
    print_chars_per_token(tokenizer, default, options.extra_text)
