"""Import a pretrained Llama-architecture model (a GGUF file, a LlamaForCausalLM folder or a Hub id) into hf_attn.

    hf-attn-import /tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --output-dir runs/smollm2
    hf-attn-import runs/llama-folder --output-dir runs/imported
    hf-attn-import HuggingFaceTB/SmolLM2-135M-Instruct --output-dir runs/smollm2-hub

The output is an hf_attn GQA (MHA/MQA) folder with the same weights in float32, the source's
tokenizer and chat template, and import.json. Convert it to MLA with `hf-attn-convert OUT_DIR ...`.
The method is described in `hf_attn/tools/conversion/importing.py`.
"""

from __future__ import annotations

import json

from ..tools.conversion.importing import ImportOptions, import_folder
from .base import command, parse


@command
def main(argv=None) -> None:
    (options,) = parse([ImportOptions], argv, description=__doc__, positional="source")
    record = import_folder(options)
    print(json.dumps(record, indent=2))
    print(f"wrote {options.output_dir}")


if __name__ == "__main__":
    main()
