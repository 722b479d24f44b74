"""Convert the comparison's MHA and GQA models to MLA at 1/2, 1/4 and 1/8 of the MHA cache, fine-tune,
train the from-scratch controls, and write docs/convert/{report.md,results.json,bpc_vs_cache.png}.

    python scripts/convert_experiment.py            # ~25 min on 2 CPU cores (reuses runs/compare/*/model)
    python scripts/convert_experiment.py --quick --output-dir /tmp/c --docs-dir /tmp/c/docs

The logic lives in `hf_attn/tools/conversion/experiment.py`.
"""

from pathlib import Path

from hf_attn.cli.base import command, parse
from hf_attn.tools.conversion.experiment import ExperimentOptions, run_experiment


@command
def main(argv=None) -> None:
    (options,) = parse([ExperimentOptions], argv, description=__doc__)
    run_experiment(options)
    print(Path(options.docs_dir, "report.md").read_text())


if __name__ == "__main__":
    main()
