"""Benchmark tokenizing and packing, and the tokenizer's characters per token.

    python scripts/bench_data.py --extra-text /path/to/tinyshakespeare.txt

Times `pack_splits` on the default corpus and on the default corpus repeated to
--target-chars characters, with num_proc=1 and 2 (best of --repeats runs, wall time), and
prints characters per token of the tokenizer on the default corpus's validation split and on
each --extra-text file. No GPT-2 vocabulary ships in any installed package, so the baseline
for comparison is bytes (1.0 characters per token on ASCII text).
"""

import argparse
import os
import time

import datasets
from transformers import AutoTokenizer

from hf_attn.train.data import CorpusSpec, load_text_splits, pack_splits
from hf_attn.train.tokenizer import chars_per_token


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="tokenizer")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--target-chars", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra-text", nargs="*", default=[], help="text files to measure chars/token on")
    args = parser.parse_args()

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    print(f"machine: {os.cpu_count()} CPU cores; tokenizer {args.tokenizer} ({len(tok)} tokens)")
    t0 = time.perf_counter()
    default = load_text_splits(CorpusSpec())
    print(f"load + split default corpus: {time.perf_counter() - t0:.2f} s")
    corpora = {
        "default corpus": default,
        f"default corpus repeated to {args.target_chars:,} chars": repeat_to(default, args.target_chars),
    }
    for label, splits in corpora.items():
        n_chars = sum(len(t) for s in splits.values() for t in s["text"])
        for num_proc in (1, 2):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                packed = pack_splits(splits, tok, args.block_size, num_proc=num_proc)
                times.append(time.perf_counter() - t0)
            tokens = sum(s["tokens"] for s in packed.stats.values())
            print(
                f"tokenize+pack {label} ({n_chars:,} chars, {tokens:,} tokens), num_proc={num_proc}: "
                f"best {min(times):.2f} s of {args.repeats} ({n_chars / min(times) / 1e6:.2f} M chars/s)"
            )

    print("characters per token (no special tokens; bytes baseline = 1.00 on ASCII):")
    c, t = chars_per_token(tok, default["validation"]["text"])
    print(f"  default corpus, validation split: {c:,} chars / {t:,} tokens = {c / t:.3f}")
    c, t = chars_per_token(tok, default["train"]["text"])
    print(f"  default corpus, train split:      {c:,} chars / {t:,} tokens = {c / t:.3f}")
    for path in args.extra_text:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        c, t = chars_per_token(tok, [text])
        print(f"  {os.path.basename(path)}: {c:,} chars / {t:,} tokens = {c / t:.3f}")


if __name__ == "__main__":
    main()
