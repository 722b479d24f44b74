"""Time one training step of hf_attn MHA against transformers' LlamaForCausalLM with the same weights.

A step is forward (with labels = input_ids), backward, AdamW step and zero_grad, on a fixed random
batch. Both models run in one process, alternating, and the table reports the median ms per step of
each and the ratio hf_attn / Llama (below 1: hf_attn is faster).

    python scripts/bench_train.py                          # sizes a and b, eager mode
    python scripts/bench_train.py --sizes a --compile      # also torch.compile both models
    python scripts/bench_train.py --sizes a --profile      # top ops by self CPU time, per model
    python scripts/bench_train.py --json results/bench_train.json
"""

import argparse

import torch

from hf_attn import HfAttnConfig
from hf_attn.tools.benchmark import (
    build_model,
    make_train_step,
    paired_ratio,
    profile_alternating,
    profile_table,
    reference_twin,
    summarize,
    swiglu_intermediate_size,
    time_alternating,
    write_json,
)
from hf_attn.utils import format_table

# Two sizes: (a) nanoGPT's CPU recipe, (b) its GPU recipe. vocab 65 is a character-level vocabulary (tiny Shakespeare).
SIZES = {
    "a": dict(num_hidden_layers=4, num_attention_heads=4, hidden_size=128, context=64, batch=12, vocab_size=65),
    "b": dict(num_hidden_layers=6, num_attention_heads=6, hidden_size=384, context=256, batch=8, vocab_size=65),
}
# The project's goals for the eager step-time ratio hf_attn / Llama.
TARGETS = {"a": 0.70, "b": 0.87}


def build_pair(size: str, attn: str, seed: int):
    """hf_attn MHA and a LlamaForCausalLM with the same weights, both in training mode, and a batch."""
    s = SIZES[size]
    config = HfAttnConfig(
        vocab_size=s["vocab_size"],
        hidden_size=s["hidden_size"],
        intermediate_size=swiglu_intermediate_size(s["hidden_size"]),
        num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"],
        max_position_embeddings=s["context"],
        attention_type="mha",
    )
    ours = build_model(config, attn, seed).train()
    llama = reference_twin(ours).train()
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, s["vocab_size"], (s["batch"], s["context"]), generator=generator)
    return ours, llama, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first (default 3)")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention kernel, both models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--profile", action="store_true", help="print the top ops by self CPU time, per model")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, float32, attn_implementation={args.attn}")
    print(f"warmup {args.warmup} steps, then {args.steps} timed steps per model, alternating hf_attn / Llama")
    print("intermediate_size = 4 * width * 2/3 rounded to the nearest multiple of 8, same for both models\n")

    results, rows = [], []
    modes = ["eager"] + (["compiled"] if args.compile else [])
    for size in args.sizes:
        ours, llama, batch = build_pair(size, args.attn, args.seed)
        s = SIZES[size]
        for mode in modes:
            if mode == "compiled":
                torch._dynamo.reset()
                ours, llama = torch.compile(ours), torch.compile(llama)
            fns = {"hf_attn": make_train_step(ours, batch), "llama": make_train_step(llama, batch)}
            if args.profile and mode == "eager":
                for fn in fns.values():
                    for _ in range(args.warmup):
                        fn()
                profiles = profile_alternating(fns, args.profile_steps)
                for name, ops in profiles.items():
                    print(
                        f"== size {size}, {name}: top ops by self CPU time, "
                        f"mean of {args.profile_steps} alternating steps =="
                    )
                    print(profile_table(ops), end="\n\n")
            # Compilation happens in the first calls: give the compiled models a few more warmups.
            warmup = args.warmup + (3 if mode == "compiled" else 0)
            times = time_alternating(fns, args.steps, warmup, desc=f"size {size} {mode}")
            ms = {name: summarize(t) for name, t in times.items()}
            ratio = ms["hf_attn"]["median"] / ms["llama"]["median"]
            paired = paired_ratio(times["hf_attn"], times["llama"])
            target = TARGETS[size] if mode == "eager" else None
            results.append(
                {
                    "size": size,
                    "dims": s,
                    "mode": mode,
                    "attn": args.attn,
                    "ms_per_step": ms,
                    "ratio": ratio,
                    "paired_ratio": paired,
                    "target": target,
                }
            )
            rows.append(
                [
                    size,
                    f"{s['num_hidden_layers']}L {s['num_attention_heads']}H d{s['hidden_size']} "
                    f"T{s['context']} B{s['batch']}",
                    mode,
                    ms["hf_attn"]["median"],
                    ms["llama"]["median"],
                    ratio,
                    paired,
                    f"<= {target:.2f}: {'met' if ratio <= target else 'NOT met'}" if target else "-",
                ]
            )
            print(
                f"size {size} {mode}: hf_attn {ms['hf_attn']['median']:.1f} ms, "
                f"llama {ms['llama']['median']:.1f} ms, ratio {ratio:.3f}",
                flush=True,
            )

    print("\nmedian ms per training step (fwd + bwd + AdamW + zero_grad)")
    print("hf_attn/llama is the ratio of the medians; 'paired' the median of per-repetition ratios")
    headers = ["size", "dims", "mode", "hf_attn ms", "llama ms", "hf_attn/llama", "paired", "goal"]
    print(format_table(headers, rows))
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
