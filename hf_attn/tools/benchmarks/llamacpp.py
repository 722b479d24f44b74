"""Decode speed and KV memory in llama.cpp against transformers, for the same MHA and MLA models.

One hf_attn model per design (width 512, 8 heads of 64, 4 layers, the project's 8192-token
vocabulary; MLA with its derived dims: kv_lora_rank 256, RoPE key 32) is exported with
`export_gguf` as f32 and q8_0 and loaded with llama-cpp-python (llama.cpp's default f16 KV cache),
with flash attention on (what llama-cli and llama-server run on the CPU by default) and, for f32,
also off (llama-cpp-python's default).
For each context, every engine prefills the same random prompt into a fresh cache, then decodes
`--steps` greedy tokens one at a time (timed: decode tokens/s). transformers runs hf_attn's own
model in float32 (sdpa, MLA absorbed decode); the engines alternate within each repetition, on the
same number of threads, and the tables show medians. The ratio is llama.cpp's speed over
transformers', as the median of per-repetition ratios. `scripts/bench_llamacpp.py` is the
command line.
"""

import importlib.metadata
import os
import statistics
import tempfile
from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer

from ...model.configuration_hf_attn import ATTENTION_DESIGNS, HfAttnConfig
from ...utils import cache_bytes, format_table, markdown_table
from ..export.gguf import export_gguf, llama_cpp_decode, load_llama_cpp
from .decode import greedy_decode, prefill
from .timing import alternating_order, build_model, paired_ratio, write_json


def gguf_designs() -> tuple[str, ...]:
    """One design per GGUF tensor layout: the first registered of each design class that exports to GGUF
    (`AttentionDesign.export_formats`): MHA for llama.cpp's `llama`, MLA for its `deepseek2`."""
    first = {}
    for name, design in ATTENTION_DESIGNS.items():
        if "gguf" in design.export_formats:
            first.setdefault(type(design), name)
    return tuple(first.values())


GGUF_DTYPES = ("f32", "q8_0")
# engine name -> (GGUF dtype, flash attention)
LLAMA_ENGINES = {
    "llama.cpp f32": ("f32", True),
    "llama.cpp q8_0": ("q8_0", True),
    "llama.cpp f32 FA off": ("f32", False),
}


@dataclass
class LlamaCppBenchOptions:
    contexts: list[int] = field(default_factory=lambda: [256, 2048], metadata={"help": "prompt lengths"})
    steps: int = field(default=32, metadata={"help": "decode steps timed per run"})
    repeats: int = field(default=3, metadata={"help": "repetitions; every engine runs once per repetition"})
    threads: int = field(
        default=1,
        metadata={
            "help": "threads for torch and for llama.cpp (on a shared, loaded 2-core machine, 2 threads spin "
            "against the other jobs and run several times slower than 1)"
        },
    )
    hidden_size: int = field(default=512, metadata={"help": "model width"})
    num_attention_heads: int = field(default=8, metadata={"help": "heads"})
    num_hidden_layers: int = field(default=4, metadata={"help": "layers"})
    intermediate_size: int = field(default=1376, metadata={"help": "SwiGLU width (a multiple of 32 for q8_0)"})
    tokenizer: str = field(default="tokenizer", metadata={"help": "tokenizer folder embedded in the GGUF files"})
    out_dir: str = field(default="docs/llamacpp", metadata={"help": "where bench.json, bench.txt, bench.md go"})


def build_engines(options: LlamaCppBenchOptions, tokenizer, folder: str) -> tuple[dict, dict, dict]:
    """{(design, engine): runner} and the configs and llama.cpp KV sizes, for both designs."""
    engines, configs, llama_kv = {}, {}, {}
    n_ctx = max(options.contexts) + options.steps + 1
    for design in gguf_designs():
        config = HfAttnConfig(
            vocab_size=len(tokenizer), hidden_size=options.hidden_size,
            num_attention_heads=options.num_attention_heads, num_hidden_layers=options.num_hidden_layers,
            intermediate_size=options.intermediate_size, max_position_embeddings=n_ctx, attention_type=design,
        )  # fmt: skip
        model = build_model(config).eval()
        configs[design] = config
        engines[design, "transformers f32"] = transformers_runner(model, options.steps)
        paths = {
            dtype: export_gguf(model, os.path.join(folder, f"{design}-{dtype}.gguf"), dtype=dtype, tokenizer=tokenizer)
            for dtype in GGUF_DTYPES
        }
        for engine, (dtype, flash_attn) in LLAMA_ENGINES.items():
            llm, kv = load_llama_cpp(paths[dtype], n_ctx=n_ctx, n_threads=options.threads, flash_attn=flash_attn)
            llama_kv[design, engine] = {**kv, "file_bytes": os.path.getsize(paths[dtype])}
            engines[design, engine] = llama_cpp_runner(llm, options.steps)
    return engines, configs, llama_kv


def transformers_runner(model, steps: int):
    def run(prompt: list[int]) -> dict:
        cache, token, _, prefill_seconds = prefill(model, torch.tensor([prompt]))
        _, seconds = greedy_decode(model, cache, token, steps)
        tokens = len(prompt) + steps  # what the cache holds after the decode
        return {"decode_s": seconds, "prefill_s": prefill_seconds, "kv_bytes_per_token": cache_bytes(cache) / tokens}

    return run


def llama_cpp_runner(llm, steps: int):
    def run(prompt: list[int]) -> dict:
        _, prefill_seconds, seconds = llama_cpp_decode(llm, prompt, steps)
        return {"decode_s": seconds, "prefill_s": prefill_seconds}

    return run


def measure(options: LlamaCppBenchOptions, engines: dict, vocab_size: int) -> dict:
    """{(design, engine, context): [run results]}, the engines alternating within each repetition."""
    runs = {(d, e, c): [] for (d, e) in engines for c in options.contexts}
    generator = torch.Generator().manual_seed(0)
    for engine in engines.values():  # warm-up: first-call allocations and page-ins, untimed
        engine(torch.randint(2, vocab_size, (min(options.contexts),), generator=generator).tolist())
    for rep in range(options.repeats):
        for context in options.contexts:
            prompt = torch.randint(2, vocab_size, (context,), generator=generator).tolist()  # past the special ids
            for design, engine in alternating_order(list(engines), rep):
                result = engines[design, engine](prompt)
                runs[design, engine, context].append(result)
                speed = options.steps / result["decode_s"]
                print(f"rep {rep} context {context:5d} {design} {engine:16s} {speed:7.1f} tok/s", flush=True)
    return runs


def speed_rows(options: LlamaCppBenchOptions, runs: dict) -> list[dict]:
    """Median decode/prefill tokens/s per (design, engine, context), and llama.cpp's paired ratio to transformers."""
    rows = []
    for (design, engine, context), results in runs.items():
        decode = [r["decode_s"] for r in results]
        reference = [r["decode_s"] for r in runs[design, "transformers f32", context]]
        rows.append({
            "design": design, "engine": engine, "context": context,
            "decode_tok_s": options.steps / statistics.median(decode),
            "prefill_tok_s": context / statistics.median(r["prefill_s"] for r in results),
            "speedup_vs_transformers": paired_ratio(reference, decode),
            "decode_s": decode,
        })  # fmt: skip
    return rows


def kv_rows(configs: dict, llama_kv: dict, runs: dict, contexts: list[int]) -> list[dict]:
    """KV bytes per token: llama.cpp's buffer (f16) over its cells; transformers' cache (f32) over the context."""
    rows = []
    for design, config in configs.items():
        kv = llama_kv[design, "llama.cpp f32"]
        transformers_bytes = runs[design, "transformers f32", max(contexts)][0]["kv_bytes_per_token"]
        rows.append({
            "design": design,
            "elements_per_token": config.kv_cache_elements_per_token,
            "llama_cpp_bytes_per_token": (kv["k_bytes"] + kv["v_bytes"]) / kv["cells"],
            "llama_cpp_k_v_types": f"{kv['k_type']}/{kv['v_type']}",
            "llama_cpp_v_bytes": kv["v_bytes"],
            "transformers_bytes_per_token": transformers_bytes,
        })  # fmt: skip
    mha = next(r for r in rows if r["design"] == "mha")
    for row in rows:
        row["llama_cpp_vs_mha"] = row["llama_cpp_bytes_per_token"] / mha["llama_cpp_bytes_per_token"]
    return rows


def tables(options: LlamaCppBenchOptions, speeds: list[dict], kvs: list[dict], markdown: bool) -> str:
    table = markdown_table if markdown else format_table
    by = {(r["design"], r["engine"], r["context"]): r for r in speeds}
    headers = ["design", "context", "transformers f32"]
    for engine in LLAMA_ENGINES:
        headers += [engine, "x"]
    rows = []
    for design in gguf_designs():
        for context in options.contexts:
            row = [design.upper(), context, by[design, "transformers f32", context]["decode_tok_s"]]
            for engine in LLAMA_ENGINES:
                r = by[design, engine, context]
                row += [r["decode_tok_s"], f"{r['speedup_vs_transformers']:.2f}x"]
            rows.append(row)
    kv_headers = [
        "design",
        "KV elements/token",
        "llama.cpp KV bytes/token (f16)",
        "vs MHA",
        "transformers KV bytes/token (f32)",
    ]
    kv_table = [[r["design"].upper(), r["elements_per_token"], round(r["llama_cpp_bytes_per_token"]),
                 f"{r['llama_cpp_vs_mha']:.3f}", round(r["transformers_bytes_per_token"])] for r in kvs]  # fmt: skip
    align = {"align": "l" + "r" * (len(headers) - 1)} if markdown else {}
    kv_align = {"align": "lrrrr"} if markdown else {}
    return (
        f"Decode tokens/s ({options.steps} greedy steps after the context, batch 1, {options.threads} thread(s); "
        f"x = llama.cpp / transformers; FA = flash attention)\n\n{table(headers, rows, **align)}\n\n"
        f"KV cache per token, all {options.num_hidden_layers} layers (llama.cpp's from its log: buffer / cells, "
        f"MiB to 2 decimals)\n\n{table(kv_headers, kv_table, **kv_align)}\n"
    )


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def run_llamacpp_benchmark(options: LlamaCppBenchOptions) -> dict:
    """Build, export and load every engine, measure, write bench.{json,txt,md} to `out_dir`; returns the results."""
    torch.set_num_threads(options.threads)
    load_before = os.getloadavg()
    tokenizer = AutoTokenizer.from_pretrained(options.tokenizer)
    with tempfile.TemporaryDirectory() as folder:
        engines, configs, llama_kv = build_engines(options, tokenizer, folder)
        runs = measure(options, engines, len(tokenizer))
    speeds = speed_rows(options, runs)
    kvs = kv_rows(configs, llama_kv, runs, options.contexts)
    os.makedirs(options.out_dir, exist_ok=True)
    results = {
        "decode": speeds,
        "kv_cache": kvs,
        "llama_cpp_kv": {f"{d} {e}": v for (d, e), v in llama_kv.items()},
        "versions": {name: importlib.metadata.version(name) for name in ("llama_cpp_python", "gguf")},
        "cpu": _cpu_model(),
        "load_average_before_after": [load_before, os.getloadavg()],  # other jobs on a shared machine
    }
    write_json(os.path.join(options.out_dir, "bench.json"), options, results)
    for name, markdown in (("bench.txt", False), ("bench.md", True)):
        with open(os.path.join(options.out_dir, name), "w") as f:
            f.write(tables(options, speeds, kvs, markdown))
    print(tables(options, speeds, kvs, markdown=False))
    return results
