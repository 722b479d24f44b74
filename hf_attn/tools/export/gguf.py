"""GGUF export for llama.cpp: MHA/GQA/MQA as its `llama` architecture, MLA as `deepseek2` with the latent cache.

The file is written with the `gguf` package (the writer and the tensor-name maps llama.cpp itself
ships), in the layout llama.cpp's own DeepSeek and Llama conversions produce, so that llama.cpp
loads it with its stock code paths:

* RoPE. hf_attn rotates the two halves of each head's RoPE dims (the non-interleaved layout);
  llama.cpp's `llama` and `deepseek2` rotate adjacent pairs. Reordering the RoPE rows of the query
  and key projections from halves to pairs gives the same attention scores (q.k is unchanged when
  both sides get the same reordering) with llama.cpp's rotation.
* MLA. `kv_b_proj` is split per head into W_UK (`attn_k_b`, stored transposed) and W_UV
  (`attn_v_b`). With these two tensors llama.cpp takes its absorbed MLA path (DeepSeek-V2
  §2.1.2): it caches only the normed latent and the RoPE key, `kv_lora_rank + qk_rope_head_dim`
  values per token and layer, and no separate V. `deepseek2` is written with every layer dense and
  `q_lora_rank` 0 when the query is not compressed (llama.cpp otherwise guesses from the depth).
* Tokenizer. Byte-level BPE with the GPT-2 split pattern is llama.cpp's `gpt2` model with the
  `gpt-2` pre-tokenizer; vocabulary, merges and special tokens are copied as they are.

Whatever llama.cpp would compute differently is refused before anything is written
(`check_exportable`), never written as a file that loads and then computes something else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from ...model.attention import KeyValueHeadsDesign
from ...model.attention_mla import MLADesign
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...utils import HfAttnError
from .to_transformers import WRITERS, design_title, load_for_export

DTYPES = ("f32", "f16", "q8_0")
# Only key/value-cache sizes are read from llama.cpp's log; see `load_llama_cpp`.
_KV_LOG = re.compile(r"\(\s*(\d+) cells,.*?K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB")


# ---------------------------------------------------------------- the export


def _require(module: str, package: str):
    """Import an optional dependency, or say which package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise HfAttnError(f"this needs the {package} package: pip install {package}") from None


def export_gguf(model: HfAttnForCausalLM | str | os.PathLike, out_path, dtype: str = "f32", tokenizer=None) -> Path:
    """Write `model` (a saved model folder, or a loaded model plus its `tokenizer`) as one GGUF file.

    `dtype`: "f32", "f16" or "q8_0" for the matrices (norms stay float32; a matrix whose rows are
    not a multiple of q8_0's 32-value block stays f16). Raises `HfAttnError` naming the feature
    llama.cpp cannot run, before writing. Writes to a temporary file first, so a failed export
    leaves no half-written `out_path`. Returns the path written.
    """
    gguf = _require("gguf", "gguf")

    model, tokenizer = _load(model, tokenizer)
    check_exportable(model, tokenizer, dtype)
    config = model.config
    arch = gguf_architecture(config)
    out_path = Path(out_path)
    tmp_path = out_path.with_name(out_path.name + ".partial")

    writer = gguf.GGUFWriter(tmp_path, arch)
    writer.add_name(Path(str(config.name_or_path or "hf_attn")).name or "hf_attn")
    writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[dtype]])
    _write_hparams(writer, config)
    _write_tokenizer(writer, tokenizer, config.vocab_size)
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH.DEEPSEEK2 if arch == "deepseek2" else gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers
    )
    for hf_name, tensor in gguf_tensors(model):
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise HfAttnError(f"no llama.cpp tensor name for {hf_name!r}")
        _add_tensor(writer, name, tensor, dtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp_path, out_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return out_path


_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}  # names in gguf.LlamaFileType


def _is_mla(config) -> bool:
    """Whether the weights are MLA's, which this file writes in deepseek2's layout (latent cache, W_UK/W_UV split).

    The one place outside the model that depends on a design's weights rather than its description; keyed
    on the design object, so a design subclassing `MLADesign` (same weights) gets the same layout.
    """
    return isinstance(config.design, MLADesign)


def gguf_architecture(config) -> str:
    """llama.cpp's architecture for the model's weights: `deepseek2` for MLA's, `llama` for Llama's q/k/v/o."""
    if _is_mla(config):
        return "deepseek2"
    if isinstance(config.design, KeyValueHeadsDesign):
        return "llama"
    raise HfAttnError(  # a design lists "gguf" in its export_formats only with one of these two layouts
        f"attention_type={config.attention_type!r}: the GGUF writer knows only the llama and deepseek2 tensor layouts"
    )


def _load(model, tokenizer):
    """The model and its tokenizer, from a folder or as given (tensors are cast to float32 as they are written)."""
    if isinstance(model, (str, os.PathLike)):
        model, folder_tokenizer = load_for_export(str(model))
        tokenizer = tokenizer or folder_tokenizer
    if not isinstance(model, HfAttnForCausalLM):
        raise HfAttnError(f"export_gguf needs an HfAttnForCausalLM, got {type(model).__name__}")
    if tokenizer is None:
        raise HfAttnError("export_gguf needs the tokenizer with a loaded model: the GGUF file embeds it")
    return model, tokenizer


def check_exportable(model: HfAttnForCausalLM, tokenizer, dtype: str = "f32") -> None:
    """Raise `HfAttnError` naming the first thing llama.cpp would not compute as hf_attn does."""
    config = model.config
    if dtype not in DTYPES:
        raise HfAttnError(f"dtype {dtype!r} is not supported for GGUF; choose one of {DTYPES}")
    if config.hidden_act != "silu":
        raise HfAttnError(f"hidden_act={config.hidden_act!r}: llama.cpp's llama/deepseek2 MLP is SwiGLU with SiLU")
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        raise HfAttnError(f"rope_type={rope_type!r}: only plain RoPE is exported")
    design = config.design
    if "gguf" not in design.export_formats:
        formats = " or ".join(WRITERS[f] for f in design.export_formats)
        instead = f"it exports with {formats}" if formats else "share it with its remote code"
        raise HfAttnError(
            f"attention_type={config.attention_type!r}: llama.cpp has no {design_title(design)} attention; {instead}"
        )
    if config.effective_sliding_window is not None:
        raise HfAttnError(
            f"sliding_window={config.sliding_window}: llama.cpp's llama architecture attends to the whole context"
        )
    gguf_architecture(config)
    if _is_mla(config):
        if config.attention_bias:
            raise HfAttnError(
                "attention_bias=True with attention_type='mla': llama.cpp's deepseek2 has no attention biases"
            )
        if config.mla_latent_norm_eps != config.rms_norm_eps:
            raise HfAttnError(
                f"mla_latent_norm_eps={config.mla_latent_norm_eps} with rms_norm_eps={config.rms_norm_eps}: "
                "llama.cpp's deepseek2 uses one eps in the block and latent norms (a checkpoint saved before "
                "mla_latent_norm_eps existed keeps 1e-6 in its latent norms)"
            )
    _check_tokenizer(tokenizer, config.vocab_size)


def _check_tokenizer(tokenizer, vocab_size: int) -> None:
    """Refuse tokenizers that llama.cpp's `gpt2` model with the `gpt-2` pre-tokenizer would not reproduce."""
    spec = _tokenizer_spec(tokenizer)
    bpe, pre = spec["model"], spec["pre_tokenizer"] or {}
    if (
        bpe["type"] != "BPE"
        or bpe.get("byte_fallback")
        or bpe.get("continuing_subword_prefix")
        or bpe.get("end_of_word_suffix")
    ):
        raise HfAttnError(
            "tokenizer: only byte-level BPE without byte fallback or affixes is exported, got "
            f"{ {k: v for k, v in bpe.items() if k not in ('vocab', 'merges')} }"
        )
    if spec["normalizer"] is not None:
        raise HfAttnError(
            f"tokenizer normalizer {spec['normalizer']['type']!r}: llama.cpp's gpt-2 pre-tokenizer has none"
        )
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex") or pre.get("add_prefix_space"):
        raise HfAttnError(
            f"tokenizer pre-tokenizer {pre}: only ByteLevel with the GPT-2 split pattern "
            "(use_regex=True, add_prefix_space=False) maps to llama.cpp's 'gpt-2'"
        )
    if any(not t["special"] for t in spec["added_tokens"]):
        raise HfAttnError("tokenizer has added tokens that are not special; they are not exported")
    if len(tokenizer) > vocab_size:
        raise HfAttnError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}")
    with_special = tokenizer.encode("a")
    plain = tokenizer.encode("a", add_special_tokens=False)
    if with_special not in (plain, [tokenizer.bos_token_id, *plain]):
        raise HfAttnError(
            f"tokenizer post-processor adds tokens {with_special} around {plain}; llama.cpp can add only a BOS token"
        )


def _tokenizer_spec(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


# ---------------------------------------------------------------- metadata


def _write_hparams(writer, config) -> None:
    """The architecture keys llama.cpp reads for `llama` or `deepseek2`."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if not _is_mla(config):
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_rope_dimension_count(config.head_dim)
        return
    # MLA runs in llama.cpp as MQA over the latent: one K "head" of kv_lora_rank + rope dims whose
    # first kv_lora_rank values double as V; the *_mla lengths are the per-head dims it expands to.
    writer.add_head_count_kv(1)
    writer.add_key_length(config.kv_lora_rank + config.qk_rope_head_dim)
    writer.add_value_length(config.kv_lora_rank)
    writer.add_key_length_mla(config.qk_nope_head_dim + config.qk_rope_head_dim)
    writer.add_value_length_mla(config.v_head_dim)
    writer.add_kv_lora_rank(config.kv_lora_rank)
    writer.add_q_lora_rank(config.q_lora_rank or 0)  # 0 = no query compression; absent, llama.cpp guesses
    writer.add_rope_dimension_count(config.qk_rope_head_dim)
    writer.add_leading_dense_block_count(config.num_hidden_layers)  # every layer dense: no MoE
    writer.add_expert_feed_forward_length(config.intermediate_size)  # required key, unused when all dense
    writer.add_expert_shared_count(0)


def _write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Vocabulary, merges and special tokens; ids past the tokenizer's (padded vocab) are unused slots."""
    import gguf

    spec = _tokenizer_spec(tokenizer)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, i in spec["model"]["vocab"].items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for added in spec["added_tokens"]:
        tokens[added["id"]], types[added["id"]] = added["content"], gguf.TokenType.CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(tokenizer.encode("a") != tokenizer.encode("a", add_special_tokens=False))
    writer.add_add_eos_token(False)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)  # llama.cpp's chat formatting reads it


# ---------------------------------------------------------------- tensors


def gguf_tensors(model: HfAttnForCausalLM):
    """(transformers name, float32 tensor) pairs in llama.cpp's layout: RoPE rows in pairs, MLA's W_UK/W_UV split."""
    config = model.config
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp falls back to token_embd when `output` is absent
        tensor = tensor.detach().float()
        if _is_mla(config):
            yield from _mla_tensor(config, name, tensor)
        elif name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            yield name, rope_rows_to_pairs(tensor, config.num_attention_heads, config.head_dim, 0, config.head_dim)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            yield name, rope_rows_to_pairs(tensor, config.num_key_value_heads, config.head_dim, 0, config.head_dim)
        else:
            yield name, tensor


def _mla_tensor(config, name: str, tensor: torch.Tensor):
    nope, rope, rank = config.qk_nope_head_dim, config.qk_rope_head_dim, config.kv_lora_rank
    heads = config.num_attention_heads
    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_b_proj.weight")):
        # per head: [nope rows, rope rows]; only the rope rows are rotated
        yield name, rope_rows_to_pairs(tensor, heads, nope + rope, nope, rope)
    elif name.endswith("self_attn.kv_a_proj_with_mqa.weight"):
        # [latent rows, shared RoPE key rows]: one block whose tail is rotated
        yield name, rope_rows_to_pairs(tensor, 1, rank + rope, rank, rope)
    elif name.endswith("self_attn.kv_b_proj.weight"):
        w_kv = tensor.view(heads, nope + config.v_head_dim, rank)  # (H, nope + v, r)
        w_uk, w_uv = w_kv.split([nope, config.v_head_dim], dim=1)  # (H, nope, r), (H, v, r)
        # llama.cpp multiplies q_nope by W_UK^T per head, so it stores W_UK transposed: (H, r, nope)
        yield name.replace("kv_b_proj", "k_b_proj"), w_uk.transpose(1, 2).contiguous()
        yield name.replace("kv_b_proj", "v_b_proj"), w_uv.contiguous()
    else:
        yield name, tensor


def rope_rows_to_pairs(tensor: torch.Tensor, blocks: int, block_size: int, offset: int, rope_dim: int) -> torch.Tensor:
    """Reorder the RoPE rows of each block from halves (i, i + d/2) to adjacent pairs (2i, 2i + 1).

    `tensor` has `blocks * block_size` rows (a weight or a bias); in each block the `rope_dim` rows
    from `offset` on are rotated. Row 2i of the result is row i of the input, row 2i + 1 is row
    i + d/2: llama.cpp's (interleaved) rotation of the result equals hf_attn's of the input.
    """
    order = torch.arange(block_size)
    pairs = torch.arange(rope_dim).view(2, rope_dim // 2).t().reshape(-1)  # 0, d/2, 1, d/2 + 1, ...
    order[offset : offset + rope_dim] = offset + pairs
    index = (torch.arange(blocks)[:, None] * block_size + order).reshape(-1)  # (blocks * block_size,)
    return tensor[index]


def _add_tensor(writer, name: str, tensor: torch.Tensor, dtype: str) -> None:
    """Norms and biases stay float32 (llama.cpp's converters do the same); matrices take `dtype`."""
    import gguf

    data = tensor.numpy()
    if data.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
        return
    if dtype == "q8_0":
        try:
            writer.add_tensor(
                name,
                gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
            return
        except gguf.QuantError:
            pass  # rows not a multiple of the 32-value block: f16, as llama.cpp's converter falls back
    writer.add_tensor(name, data.astype(np.float16))


# ---------------------------------------------------------------- running the file in llama.cpp


def load_llama_cpp(
    path, n_ctx: int, n_threads: int | None = None, kv_dtype: str = "f16", logits_all: bool = False,
    flash_attn: bool = False,
):  # fmt: skip
    """Load a GGUF file with llama-cpp-python; returns the `Llama` and llama.cpp's KV cache sizes in bytes.

    The sizes come from llama.cpp's own log line ("(2304 cells, ...) K (f16): ... MiB, V (f16): ...
    MiB"), read through a log callback for the duration of the load: {"k_bytes", "v_bytes", "k_type",
    "v_type", "cells"}; the MiB are printed with two decimals.
    `kv_dtype` is the cache's element type ("f16", llama.cpp's default, or "f32"). `flash_attn`:
    llama-cpp-python turns flash attention off unless asked; llama-cli and llama-server default to
    "auto", which turns it on for the CPU.
    """
    llama_cpp = _require("llama_cpp", "llama-cpp-python")
    ggml_type = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv_dtype]
    with _llama_log() as lines, _without_amx_buffers():
        llm = llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            type_k=ggml_type,
            type_v=ggml_type,
            logits_all=logits_all,
            flash_attn=flash_attn,
            verbose=False,
        )
    return llm, _logged_kv(lines, path)


@contextlib.contextmanager
def _llama_log():
    """llama.cpp's log lines while the block runs (then its log goes back to llama-cpp-python's logger)."""
    import ctypes

    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))


def _logged_kv(lines: list[str], path) -> dict:
    """The KV cache sizes of llama.cpp's log line: {"k_bytes", "v_bytes", "k_type", "v_type", "cells"}."""
    match = _KV_LOG.search("".join(lines))
    if match is None:
        raise HfAttnError(f"{path}: llama.cpp logged no KV cache size")
    cells, k_type, k_mib, v_type, v_mib = match.groups()
    kv = {"k_bytes": float(k_mib) * 2**20, "v_bytes": float(v_mib) * 2**20, "k_type": k_type, "v_type": v_type}
    kv["cells"] = int(cells)  # token slots: n_ctx rounded up to llama.cpp's padding
    return kv


def llama_cpp_sequences_context(
    llm, context: int, sequences: int, threads: int, flash_attn: str = "auto", kv_dtype: str = "f16"
):
    """A second llama.cpp context on `llm`'s weights with `sequences` separate KV streams of `context` slots.

    Each sequence gets a cache of its own (`kv_unified=False`), as independent requests in a server do.
    `flash_attn` is "auto" (llama-cli's and llama-server's default: on for the CPU) or "off". Returns the
    context pointer (free it with `llama_free`) and the logged KV sizes: the bytes of all streams together,
    the cells of one.
    """
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = context * sequences, sequences, False
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = {"auto": -1, "off": 0}[flash_attn]
    params.type_k = params.type_v = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv_dtype]
    with _llama_log() as lines:
        ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if not ctx:
        raise HfAttnError(f"llama.cpp could not create a context of {sequences} x {context} tokens")
    return ctx, _logged_kv(lines, llm.model_path)


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def _without_amx_buffers():
    """Load without llama.cpp's extra weight buffers (AMX, repacking) on CPUs with AMX.

    llama.cpp's AMX matmul crashes the process on some AMX machines (a segmentation fault in
    `ggml_backend_amx_mul_mat`, llama.cpp issue 20824, open without a fix): a q8_0 file crashed here on
    the first decode. The plain CPU buffers compute the same products. llama-cpp-python's `Llama` takes no
    such option, so its default model parameters are wrapped while it is built.
    """
    if not _cpu_has_amx():
        yield
        return
    import llama_cpp.llama_cpp as bindings

    defaults = bindings.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        bindings.llama_model_default_params = defaults


def llama_cpp_greedy(llm, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation in llama.cpp, by argmax over its logits (no sampler, so no penalties)."""
    return llama_cpp_decode(llm, prompt_ids, new_tokens)[0]


def llama_cpp_decode(llm, prompt_ids: list[int], steps: int) -> tuple[list[int], float, float]:
    """Prefill `prompt_ids` into a fresh cache, then `steps` greedy tokens one at a time.

    Returns the tokens and the seconds of the prefill and of the decode steps.
    """
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt_ids)
    prefill_seconds = time.perf_counter() - start
    tokens = []
    start = time.perf_counter()
    for _ in range(steps):
        token = int(np.argmax(last_logits(llm)))
        tokens.append(token)
        llm.eval([token])
    return tokens, prefill_seconds, time.perf_counter() - start


def last_logits(llm) -> np.ndarray:
    """The logits llama.cpp computed for the last evaluated token (vocab,), read from the context.

    llama-cpp-python 0.3.x fills `Llama.scores` only with `logits_all=True`; the context always
    holds the last token's logits.
    """
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def _fill_batch(batch, tokens: list[int], positions: list[int], sequences: list[int], logits: list[bool]) -> None:
    batch.n_tokens = len(tokens)
    for i, (token, pos, seq, want) in enumerate(zip(tokens, positions, sequences, logits)):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, want
        batch.seq_id[i][0] = seq


def _decode(ctx, batch) -> None:
    import llama_cpp

    status = llama_cpp.llama_decode(ctx, batch)
    if status != 0:
        raise HfAttnError(f"llama_decode failed with status {status}")


def _argmax_logits(ctx, rows: list[int], vocab_size: int) -> list[int]:
    """The greedy token at each of `rows`, positions in the last batch (negative: from its end)."""
    import llama_cpp

    return [
        int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(vocab_size,))))
        for i in rows
    ]


def llama_cpp_sequences_decode(ctx, prompt_ids: list[int], sequences: int, steps: int, vocab_size: int) -> dict:
    """Prefill `prompt_ids` as sequence 0, copy its cache to sequences 1.., then time greedy steps.

    The batch-1 steps run first, on sequence 0 alone (then removed from its cache); the batch steps then
    decode one token per sequence per call, as a server's continuous batch does. Returns the seconds of
    the prefill and of each decode's `steps` timed steps (after one untimed step), the greedy token after the
    prompt, and each decode's tokens (steps + 1 x rows).
    """
    import llama_cpp

    batch = llama_cpp.llama_batch_init(512, 0, 1)
    memory = llama_cpp.llama_get_memory(ctx)
    n = len(prompt_ids)
    try:
        start = time.perf_counter()
        for first in range(0, n, 512):
            chunk = prompt_ids[first : first + 512]
            positions = list(range(first, first + len(chunk)))
            _fill_batch(batch, chunk, positions, [0] * len(chunk), [p == n - 1 for p in positions])
            _decode(ctx, batch)
        token = _argmax_logits(ctx, [-1], vocab_size)[0]
        out = {"prefill_seconds": time.perf_counter() - start, "first_token": token}
        for rows in dict.fromkeys((1, sequences)):
            if rows > 1:
                llama_cpp.llama_memory_seq_rm(memory, 0, n, -1)
                for seq in range(1, rows):
                    llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
            tokens = [[token] * rows]
            for step in range(steps + 1):  # the first step, untimed, builds the batch's compute graph
                if step == 1:
                    start = time.perf_counter()
                _fill_batch(batch, tokens[-1], [n + step] * rows, list(range(rows)), [True] * rows)
                _decode(ctx, batch)
                tokens.append(_argmax_logits(ctx, list(range(rows)), vocab_size))
            out[f"decode_seconds_batch_{rows}"] = time.perf_counter() - start
            out[f"tokens_batch_{rows}"] = tokens[1:]
        return out
    finally:
        llama_cpp.llama_batch_free(batch)
