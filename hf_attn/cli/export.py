"""Export a saved hf_attn model: a GGUF file for llama.cpp, or a plain transformers Llama / DeepseekV3 folder.

    hf-attn-export runs/mla --format gguf --out mla.gguf [--dtype f32|f16|q8_0]
    hf-attn-export runs/gqa --format llama --out gqa-llama/          # MHA/GQA/MQA
    hf-attn-export runs/mla --format deepseek_v3 --out mla-dsv3/     # MLA
    hf-attn-export runs/swa --format mistral --out swa-mistral/      # MHA/GQA/MQA, sliding window or not

GGUF: MHA/GQA/MQA go out as llama.cpp's `llama` architecture, MLA as `deepseek2` with its
latent-only cache; the tokenizer is embedded. See docs/llamacpp.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from ..tools.export.gguf import DTYPES, export_gguf
from ..tools.export.to_transformers import export_folder
from .base import command, parse


@dataclass
class ExportOptions:
    model_dir: str | None = field(default=None, metadata={"help": "a saved hf_attn model folder (with its tokenizer)"})
    format: Literal["gguf", "llama", "deepseek_v3", "mistral"] = field(
        default="gguf",
        metadata={"help": "gguf: one file for llama.cpp; llama / deepseek_v3 / mistral: a transformers folder"},
    )
    out: str | None = field(default=None, metadata={"help": "the .gguf file, or the folder, to write"})
    dtype: Literal[DTYPES] = field(
        default="f32", metadata={"help": "GGUF weight type (norms stay f32); ignored by the folder formats"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace --out if it exists"})


@command
def main(argv=None) -> None:
    (options,) = parse([ExportOptions], argv, description=__doc__, positional="model_dir")
    if options.model_dir is None:
        raise ValueError("give the model folder to export (MODEL_DIR)")
    if options.out is None:
        raise ValueError("--out is required: the .gguf file or the folder to write")
    if os.path.exists(options.out) and not options.overwrite:
        raise FileExistsError(f"{options.out!r} exists; pass --overwrite to replace it")
    if options.format == "gguf":
        path = export_gguf(options.model_dir, options.out, dtype=options.dtype)
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {options.dtype})")
    else:
        export_folder(options.model_dir, options.out, options.format)
        print(f"wrote {options.out} ({options.format})")


if __name__ == "__main__":
    main()
