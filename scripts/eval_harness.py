"""Score one saved model packed, rolling and with lm-evaluation-harness; write report.md and results.json.

    python scripts/eval_harness.py runs/compare/mla/model --out-dir docs/integrations/harness_mla

The corpus is the run's own (its train_args.json), else the default corpus; needs `pip install lm-eval`.
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: take it off sys.path.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

from hf_attn.cli.base import command, parse  # noqa: E402
from hf_attn.integrations.harness.report import harness_report  # noqa: E402


@dataclass
class HarnessReportOptions:
    model_dir: str | None = field(default=None, metadata={"help": "a saved model folder (a training run's output)"})
    out_dir: str = field(default="docs/integrations/harness", metadata={"help": "where report.md goes"})
    batch_size: int = field(default=8, metadata={"help": "windows or blocks per forward pass"})


@command
def main(argv=None) -> None:
    (options,) = parse([HarnessReportOptions], argv, description=__doc__, positional="model_dir")
    if options.model_dir is None:
        raise ValueError("give the model folder: python scripts/eval_harness.py MODEL_DIR")
    summary = harness_report(options.model_dir, options.out_dir, batch_size=options.batch_size)
    print(Path(options.out_dir, "report.md").read_text())
    return summary


if __name__ == "__main__":
    main()
