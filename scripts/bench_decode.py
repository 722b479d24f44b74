"""Decode speed on CPU: hf_attn MLA against DeepseekV3ForCausalLM with the same weights, and MHA/GQA/MQA.

Models (one process, float32, batch 1): hf_attn MLA and transformers' DeepseekV3ForCausalLM carrying
its weights (`to_deepseek_v3`); hf_attn MHA, GQA and MQA of the same width; and LlamaForCausalLM
carrying the MHA weights (`to_llama`) as a reference. For each context length, every model prefills
the same random prompt into a fresh DynamicCache (timed: prefill tokens/s), then runs a manual
greedy loop of `model(input_ids=next_token, cache=cache, use_cache=True)` under inference_mode
(timed: decode tokens/s). Models alternate within each repetition; the tables show medians.

    python scripts/bench_decode.py                                   # contexts 256 2048 4096 8192
    python scripts/bench_decode.py --contexts 256 2048 --repeats 1   # a quick look
    python scripts/bench_decode.py --json results/bench_decode.json
"""

import argparse
import gc
import statistics

import torch
from tqdm.auto import tqdm

from hf_attn import HfAttnConfig
from hf_attn.tools.benchmark import (
    alternating_order,
    build_model,
    greedy_decode,
    prefill,
    reference_twin,
    write_json,
)
from hf_attn.utils import cache_bytes, format_table

# The project's goals: decode tokens/s ratios at a context, and MLA prefill at 2048 vs DeepseekV3.
DECODE_TARGETS = {4096: {"deepseek_v3": 5.0, "mha": 1.5}, 8192: {"deepseek_v3": 6.0}}
PREFILL_TARGET_CONTEXT = 2048
# (model name, what it is): the first column of every table.
MODELS = {
    "mla": "hf_attn MLA",
    "deepseek_v3": "DeepseekV3ForCausalLM (MLA weights)",
    "mha": "hf_attn MHA",
    "gqa": "hf_attn GQA",
    "mqa": "hf_attn MQA",
    "llama": "LlamaForCausalLM (MHA weights)",
}


def build_models(args, max_positions: int) -> tuple[dict, dict]:
    """The six models of the comparison, in eval mode, and the hf_attn config behind each."""
    trunk = dict(
        vocab_size=args.vocab_size,
        hidden_size=512,
        num_attention_heads=8,
        num_hidden_layers=4,
        intermediate_size=1376,
        max_position_embeddings=max_positions,
    )
    mla_dims = dict(kv_lora_rank=128, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64)
    configs = {
        "mla": HfAttnConfig(**trunk, attention_type="mla", **mla_dims),
        "mha": HfAttnConfig(**trunk, attention_type="mha", head_dim=64),
        "gqa": HfAttnConfig(**trunk, attention_type="gqa", head_dim=64),
        "mqa": HfAttnConfig(**trunk, attention_type="mqa", head_dim=64),
    }
    models = {name: build_model(config, args.attn, args.seed).eval() for name, config in configs.items()}
    models["deepseek_v3"] = reference_twin(models["mla"]).eval()
    models["llama"] = reference_twin(models["mha"]).eval()
    configs["deepseek_v3"], configs["llama"] = configs["mla"], configs["mha"]
    return {name: models[name] for name in MODELS}, configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 2048, 4096, 8192])
    parser.add_argument("--steps", type=int, default=32, help="decode steps per model (default 32)")
    parser.add_argument("--long-steps", type=int, default=16, help="decode steps at contexts >= 4096 (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="prefill + decode runs per model and context")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention kernel, all models")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    steps_at = {c: args.steps if c < 4096 else args.long_steps for c in args.contexts}
    models, configs = build_models(args, max(c + steps_at[c] for c in args.contexts))
    models = {name: models[name] for name in args.models}
    print(f"torch {torch.__version__}, {args.threads} threads, float32, batch 1, attn_implementation={args.attn}")
    print(
        "trunk: 4 layers, hidden 512, 8 heads, intermediate 1376, vocab "
        f"{args.vocab_size}; MLA kv_lora_rank 128, qk_rope 32, qk_nope 64, v 64; others head_dim 64 "
        f"(GQA {configs['gqa'].num_key_value_heads} kv heads, MQA 1)"
    )
    print(
        f"{args.repeats} repeats per context, models alternating; decode steps: "
        + ", ".join(f"{c}: {steps_at[c]}" for c in args.contexts)
        + "\n"
    )

    generator = torch.Generator().manual_seed(args.seed)
    results = {}
    for context in args.contexts:
        prompt = torch.randint(0, args.vocab_size, (1, context), generator=generator)
        runs = {name: {"prefill_s": [], "decode_s": []} for name in models}
        last_logits = {}
        bar = tqdm(total=args.repeats * len(models), desc=f"context {context}", leave=False)
        for i in range(args.repeats):
            for name in alternating_order(list(models), i):
                cache, token, logits, prefill_s = prefill(models[name], prompt)
                runs[name]["kv_bytes_per_token"] = cache_bytes(cache) / context
                last_logits[name] = logits
                _, decode_s = greedy_decode(models[name], cache, token, steps_at[context])
                runs[name]["prefill_s"].append(prefill_s)
                runs[name]["decode_s"].append(decode_s)
                del cache
                gc.collect()
                bar.update()
        bar.close()
        for run in runs.values():
            run["prefill_tok_s"] = context / statistics.median(run["prefill_s"])
            run["decode_tok_s"] = steps_at[context] / statistics.median(run["decode_s"])
        # Same weights must give the same prompt logits; a large gap means the pair is not comparable.
        run_diffs = {
            f"{a} vs {b}": (last_logits[a] - last_logits[b]).abs().max().item()
            for a, b in (("mla", "deepseek_v3"), ("mha", "llama"))
            if a in last_logits and b in last_logits
        }
        results[context] = {"steps": steps_at[context], "models": runs, "prompt_logit_max_abs_diff": run_diffs}
        tok = {name: runs[name]["decode_tok_s"] for name in runs}
        line = ", ".join(f"{n} {t:.1f}" for n, t in tok.items())
        print(f"context {context}: decode tok/s {line}", flush=True)

    print("\nKV-cache bytes per token (measured after prefill: sum of keys + values nbytes / tokens)")
    first = results[args.contexts[0]]["models"]
    rows = [
        [name, MODELS[name], int(first[name]["kv_bytes_per_token"]), configs[name].kv_cache_elements_per_token * 4]
        for name in models
    ]
    print(format_table(["model", "", "measured B/token", "config formula x 4 B"], rows))

    print("\nprefill tokens/s (median)")
    rows = [[name] + [results[c]["models"][name]["prefill_tok_s"] for c in args.contexts] for name in models]
    print(format_table(["model"] + [f"ctx {c}" for c in args.contexts], rows))

    print("\ndecode tokens/s (median)")
    rows = [[name] + [results[c]["models"][name]["decode_tok_s"] for c in args.contexts] for name in models]
    print(format_table(["model"] + [f"ctx {c}" for c in args.contexts], rows))

    print("\nratios (decode tokens/s; prefill where named) and the project's goals")
    rows = []
    for context in args.contexts:
        m = results[context]["models"]
        for other, label in (("deepseek_v3", "MLA/DeepseekV3"), ("mha", "MLA/MHA")):
            if "mla" not in m or other not in m:
                continue
            ratio = m["mla"]["decode_tok_s"] / m[other]["decode_tok_s"]
            target = DECODE_TARGETS.get(context, {}).get(other)
            verdict = f">= {target:g}: {'met' if ratio >= target else 'NOT met'}" if target else "-"
            rows.append([context, f"decode {label}", ratio, verdict])
            results[context].setdefault("ratios", {})[f"decode {label}"] = ratio
        if context == PREFILL_TARGET_CONTEXT and "mla" in m and "deepseek_v3" in m:
            ratio = m["mla"]["prefill_tok_s"] / m["deepseek_v3"]["prefill_tok_s"]
            rows.append([context, "prefill MLA/DeepseekV3", ratio, f">= 1: {'met' if ratio >= 1 else 'NOT met'}"])
            results[context].setdefault("ratios", {})["prefill MLA/DeepseekV3"] = ratio
    if rows:
        print(format_table(["context", "ratio", "value", "goal"], rows))

    print("\nsanity: max |logit difference| on the prompt's last position, same weights")
    for context in args.contexts:
        diffs = results[context]["prompt_logit_max_abs_diff"]
        print(f"  context {context}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
