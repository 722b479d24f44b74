"""The main job under the old and the new recipe: two hf-attn-compare runs at the same budget, side by side.

    hf-attn-compare --optimizer muon --output-dir runs/compare-muon --mqar-results docs/compare/mqar/results.json
    flock /tmp/hf_attn_cpu.lock python scripts/compare_recipes.py --old docs/compare --new runs/compare-muon

Per design and seed: bits/char under each recipe; then the reference design's seconds per training step
under each recipe's optimizer, measured here with the two interleaved (`hf_attn/tools/benchmarks/recipe_compare.py`).
"""

import json
import os
import shlex
import sys
from dataclasses import dataclass, field

from hf_attn.cli.base import command, parse
from hf_attn.tools.benchmarks.recipe_compare import compare_markdown, compare_recipes
from hf_attn.utils import AT_LEAST_ONE, check_options, environment


@dataclass
class CompareRecipesOptions:
    old: str = field(default="docs/compare", metadata={"help": "the hf-attn-compare folder of the old recipe"})
    new: str = field(default="runs/compare-muon", metadata={"help": "the hf-attn-compare folder of the new recipe"})
    repeats: int = field(default=30, metadata={"help": "interleaved training steps timed per recipe"})
    json: str = field(default="docs/recipe/compare.json", metadata={"help": "write the results here"})
    markdown: str = field(default="docs/recipe/compare.md", metadata={"help": "write the table here"})

    def __post_init__(self):
        check_options(self, {"repeats": AT_LEAST_ONE})


@command
def main(argv=None) -> None:
    (options,) = parse([CompareRecipesOptions], argv, description=__doc__)
    result = compare_recipes(options.old, options.new, options.repeats)
    cmd = "python scripts/compare_recipes.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    os.makedirs(os.path.dirname(options.json) or ".", exist_ok=True)
    with open(options.json, "w") as f:
        json.dump({"args": vars(options), "environment": environment(), "results": result}, f, indent=2)
    markdown = compare_markdown(result, cmd, environment())
    with open(options.markdown, "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
