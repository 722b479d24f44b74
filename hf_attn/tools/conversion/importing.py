"""Bring a pretrained Llama-architecture model into hf_attn: a GGUF file, a `LlamaForCausalLM` folder or a Hub id.

The result is an ordinary hf_attn GQA (or MHA/MQA) folder with the same weights, the source's
tokenizer and chat template, and `import.json`; every hf_attn tool reads it (evaluate, demo,
export, convert, `hf-attn-train --init-from`). The weights are renamed nowhere: hf_attn's
MHA/GQA/MQA parameter names are transformers' Llama names (`convert.from_llama`).

A GGUF file is read by transformers' own GGUF loader (`from_pretrained(folder, gguf_file=...)`),
which dequantizes every tensor to float32 and builds the tokenizer from the file's vocabulary,
merges and chat template. transformers refuses to `save_pretrained` such a model ("quantized with
gguf"), so the dequantized weights are copied into a plain model and its `quantization_config` is
dropped: the saved folder holds float32 weights that equal the dequantized ones exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

from ...loading import load_model, load_tokenizer, read_config
from ...model.modeling_hf_attn import HfAttnForCausalLM
from ...utils import HfAttnError, check_output_dir, prepare_output_dir
from .convert import from_llama

MARKER = "import.json"


@dataclass
class ImportOptions:
    """What `hf-attn-import` reads and where it writes the hf_attn folder."""

    _argument_group_name = "import"

    source: str | None = field(
        default=None,
        metadata={"help": "a .gguf file (Llama architecture), a LlamaForCausalLM folder, or a Hub id"},
    )
    output_dir: str | None = field(default=None, metadata={"help": "where to write the hf_attn model folder"})
    gguf_file: str | None = field(
        default=None, metadata={"help": "the GGUF file's name inside --source, when --source is a folder or Hub id"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace a previous import in --output-dir"})


def _gguf_location(source: str, gguf_file: str | None) -> tuple[str, str] | None:
    """(folder or Hub id, file name) when the source is a GGUF file; None for a safetensors checkpoint."""
    if gguf_file is not None:
        return source, gguf_file
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise HfAttnError(f"{source}: no such GGUF file")
        path = Path(source).resolve()
        return str(path.parent), path.name
    return None


def load_llama_gguf(folder: str, gguf_file: str) -> tuple[LlamaForCausalLM, object]:
    """transformers' Llama from a GGUF file, dequantized to float32 and made serializable, and its tokenizer."""
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    if not isinstance(loaded, LlamaForCausalLM):
        raise HfAttnError(
            f"{gguf_file}: transformers reads it as {type(loaded).__name__}; only the Llama architecture is imported"
        )
    config = loaded.config
    del config.quantization_config  # the weights are float32 now: nothing of the GGUF quantization is left
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    return model.eval(), tokenizer


def load_pretrained(source: str, gguf_file: str | None = None) -> tuple[LlamaForCausalLM, object]:
    """transformers' own `LlamaForCausalLM` (float32) and tokenizer for a GGUF file, a Llama folder or a Hub id."""
    location = _gguf_location(source, gguf_file)
    if location is not None:
        return load_llama_gguf(*location)
    read_config(source, accept=("llama",))
    model = load_model(source, LlamaForCausalLM, accept=("llama",))
    return model, load_tokenizer(source, vocab_size=model.config.vocab_size)


def import_model(source: str, gguf_file: str | None = None) -> tuple[HfAttnForCausalLM, object]:
    """The hf_attn MHA/GQA/MQA model with the pretrained Llama's weights, and its tokenizer."""
    llama, tokenizer = load_pretrained(source, gguf_file)
    model = from_llama(llama)
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id,
    )
    return model, tokenizer


def import_folder(options: ImportOptions) -> dict:
    """Import `options.source` and write the hf_attn folder, its tokenizer and import.json; returns the record."""
    for name in ("source", "output_dir"):
        if getattr(options, name) is None:
            raise ValueError(f"--{name.replace('_', '-')} is required")
    check_output_dir(options.output_dir, MARKER, options.overwrite)  # refuse before the (slow) load
    model, tokenizer = import_model(options.source, options.gguf_file)
    prepare_output_dir(options.output_dir, MARKER, options.overwrite)
    model.save_pretrained(options.output_dir)
    tokenizer.save_pretrained(options.output_dir)
    record = {
        "source": options.source,
        "gguf_file": options.gguf_file,
        "attention_type": model.config.attention_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "kv_cache_elements_per_token": model.config.kv_cache_elements_per_token,
        "chat_template": tokenizer.chat_template is not None,
    }
    with open(os.path.join(options.output_dir, MARKER), "w") as f:
        json.dump(record, f, indent=2)
    return record
