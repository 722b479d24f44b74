"""hf_attn's short-run recipe and nanoGPT's CPU recipe on Tiny Shakespeare, on one machine in one run.

    flock /tmp/hf_attn_cpu.lock python scripts/race_nanogpt.py tinyshakespeare.txt --nanogpt-dir nanoGPT
    python scripts/race_nanogpt.py tinyshakespeare.txt --nanogpt-dir nanoGPT --budget 600 \\
        --overrides hidden_size=256,intermediate_size=688,attention_dropout=0.1 --flags "--muon-weight-decay 0.1" \\
        --json docs/recipe/race_10min.json --markdown docs/recipe/race_10min.md

nanoGPT runs from a copy of --nanogpt-dir, as its own scripts (prepare.py, train.py); nothing of it is
kept here. What is measured is described in `hf_attn/tools/benchmarks/recipe.py`.
"""

import shlex
import sys
import tempfile

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.recipe import RaceOptions, load_recipe, race, race_markdown, write_outputs
from hf_attn.utils import environment


@command
def main(argv=None) -> None:
    (options,) = parse([RaceOptions], argv, description=__doc__, positional="text_file")
    recipe = load_recipe(options.recipe, options.overrides, options.flags)
    with tempfile.TemporaryDirectory() as tmp:
        result = race(
            options.nanogpt_dir,
            options.text_file,
            recipe,
            options.budget,
            options.workdir or tmp,
            options.nanogpt_iters,
        )
    cmd = "python scripts/race_nanogpt.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_outputs(options, result, race_markdown(result, cmd, environment()))


if __name__ == "__main__":
    main()
