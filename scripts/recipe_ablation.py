"""The short-run recipe's ablation on Tiny Shakespeare: the old recipe, then one change at a time.

    flock /tmp/hf_attn_cpu.lock python scripts/recipe_ablation.py tinyshakespeare.txt   # docs/recipe/ablation.*

The changes, the step sizing and the rule for keeping a change are in `hf_attn/tools/benchmarks/recipe.py`.
"""

import shlex
import sys
import tempfile

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.recipe import (
    AblationOptions,
    ablation_markdown,
    chosen_changes,
    run_ablation,
    write_outputs,
)
from hf_attn.utils import environment


@command
def main(argv=None) -> None:
    (options,) = parse([AblationOptions], argv, description=__doc__, positional="text_file")
    changes = chosen_changes(options.changes)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_ablation(options.text_file, options.budget, options.workdir or tmp, changes)
    cmd = "python scripts/recipe_ablation.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_outputs(options, result, ablation_markdown(result, cmd, environment()))


if __name__ == "__main__":
    main()
