"""Convert an MHA/GQA/MQA model (an hf_attn folder, or a LlamaForCausalLM folder or Hub id) to DeepSeek MLA.

    hf-attn-convert runs/compare/mha/model --kv-lora-rank 112 --rope-dim 16 --output-dir runs/mha-to-mla
    hf-attn-convert meta-llama/Llama-3.2-1B --kv-lora-rank 448 --rope-dim 64 --output-dir llama-mla
    hf-attn-convert runs/mqa --kv-lora-rank 32 --rope-dim 32 --latent-norm bypass --calibration-tokens 0 ...
    hf-attn-convert runs/smollm2 --kv-lora-rank 160 --rope-dim 32 --recovery-steps 100 --output-dir runs/smollm2-mla

The output is an ordinary hf_attn MLA folder (weights, config, modeling code, tokenizer, and
conversion.json with the choices made). --recovery-steps N then fits each layer's attention to the
source layer's outputs on calibration tokens (hf_attn/tools/conversion/recovery.py). Fine-tune the
result with `hf-attn-train --init-from OUT_DIR`.
Calibration text comes from the data options (default: the offline default corpus's train split).
The method is described in `hf_attn/tools/conversion/convert.py`.
"""

from __future__ import annotations

import json

from ..tools.conversion.convert import ConvertOptions, convert_folder
from ..tools.conversion.recovery import RecoveryOptions, recover_folder
from ..train.data import CorpusSpec
from .base import command, parse


@command
def main(argv=None) -> None:
    options, recovery, corpus = parse(
        [ConvertOptions, RecoveryOptions, CorpusSpec], argv, description=__doc__, positional="source"
    )
    record = convert_folder(options, corpus)
    if recovery.recovery_steps:
        record = recover_folder(options, recovery, corpus)
    print(
        json.dumps(
            {
                k: record[k]
                for k in (
                    "source",
                    "rope_stride",
                    "source_kv_cache_elements_per_token",
                    "kv_cache_elements_per_token",
                    "attention_errors",
                )
            },
            indent=2,
        )
    )
    print(f"wrote {options.output_dir}")


if __name__ == "__main__":
    main()
