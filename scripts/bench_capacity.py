"""Cache capacity: how many sequences of `--seq-len` tokens each design's cache holds in a memory budget.

Each design (the decode benchmark's trunk: 4 layers, width 512, 8 heads; MLA rank 128 + RoPE 32; MHA
with a sliding window; Performer) runs one random sequence of `--seq-len` tokens into a DynamicCache
in `--dtype`, and the bytes that cache holds are measured (`cache_bytes`): per sequence, and per token.
The count is budget // bytes per sequence. The check then allocates it: the batch-1 cache copied
across that many sequences (`expand_cache_batch`), at `--check-scale` of the budget, and measures
that the copies fit and one more would not.

    python scripts/bench_capacity.py --plot docs/bench/capacity.png --json docs/bench/capacity.json
"""

import argparse

import torch

from hf_attn.tools.benchmarks.capacity import capacity, check_capacity, plot_capacity, sequence_cache
from hf_attn.tools.benchmarks.decode import decode_configs
from hf_attn.tools.benchmarks.timing import build_model, write_json
from hf_attn.utils import cache_bytes, format_table


def measure(args) -> dict:
    """Bytes per sequence and the capacity, measured and checked, for every design."""
    dtype = getattr(torch, args.dtype)
    budget = int(args.budget_gib * 2**30)
    results = {}
    for name, config in decode_configs(args.vocab_size, args.seq_len, args.window).items():
        model = build_model(config, args.attn, args.seed).to(dtype).eval()
        cache = sequence_cache(model, args.seq_len, args.seed)
        per_sequence = cache_bytes(cache)
        check = check_capacity(cache, int(budget * args.check_scale))
        results[name] = {
            "bytes_per_sequence": per_sequence,
            "bytes_per_token": per_sequence / args.seq_len,
            "formula_bytes": config.kv_cache_elements(args.seq_len) * dtype.itemsize,
            "sequences": capacity(per_sequence, budget),
            "check": check,
        }
        del model, cache
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-gib", type=float, default=2.0, help="cache budget in GiB (default 2)")
    parser.add_argument("--seq-len", type=int, default=8192, help="tokens per sequence (default 8192)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--check-scale", type=float, default=0.25, help="allocate this fraction of the budget")
    parser.add_argument("--window", type=int, default=1024, help="sliding window of the windowed MHA (0: none)")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PNG", help="write the bar chart here")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = measure(args)
    mha = results["mha"]["sequences"]
    print(f"{args.budget_gib:g} GiB of cache in {args.dtype}, sequences of {args.seq_len} tokens")
    print(f"check: the caches allocated at {args.check_scale:g} x the budget fit, and one more would not\n")
    rows = [
        [
            name,
            round(r["bytes_per_token"]),
            r["bytes_per_sequence"] / 2**20,
            r["formula_bytes"] == r["bytes_per_sequence"],
            r["sequences"],
            r["sequences"] / mha,
            r["check"]["sequences"],
            r["check"]["fits"],
        ]
        for name, r in results.items()
    ]
    headers = ["design", "B/token", "MiB/sequence", "= formula", "sequences", "x MHA", "allocated", "check"]
    print(format_table(headers, rows))
    if not all(r["formula_bytes"] == r["bytes_per_sequence"] for r in results.values()):
        print("(= formula: config.kv_cache_elements x the dtype's size; a state kept in float32 is twice that)")
    ratio = results["mla"]["sequences"] / mha
    print(
        f"\ngoal: MLA holds >= 3.5x MHA's sequences at 8 heads: {ratio:.2f}x, {'met' if ratio >= 3.5 else 'NOT met'}"
    )
    if args.plot:
        title = f"{args.seq_len}-token sequences in {args.budget_gib:g} GiB of {args.dtype} cache"
        plot_capacity(args.plot, {name: r["sequences"] for name, r in results.items()}, title)
        print(f"wrote {args.plot}")
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
