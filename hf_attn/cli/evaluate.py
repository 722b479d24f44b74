"""Evaluate a saved model: validation loss, perplexity, bits per character and bits per byte.

    hf-attn-evaluate runs/mla                                  # the default corpus, packed blocks
    hf-attn-evaluate runs/mla --rolling                        # lm-evaluation-harness's rolling windows
    hf-attn-evaluate runs/mla --text-files data.txt --split chars --json

Give the same data flags as the training run to score the same validation split. Packed mode
scores the split as training evaluates it (blocks of --block-size); --rolling scores each document
whole with the harness's context rule, so it matches `lm_eval --tasks hf_attn_rolling` run with
`max_length` = --block-size (docs/integrations.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..train.data import CorpusSpec
from ..train.evaluation import evaluate_model
from ..utils import AT_LEAST_ONE, check_options
from .base import command, parse


@dataclass
class EvalOptions:
    _argument_group_name = "evaluation"

    model_dir: str | None = field(default=None, metadata={"help": "a saved model folder (a training run's output)"})
    block_size: int | None = field(
        default=None, metadata={"help": "block (or rolling window) size; default: the training run's"}
    )
    batch_size: int = field(default=8, metadata={"help": "blocks or windows per forward pass"})
    eval_batches: int | None = field(
        default=None, metadata={"help": "packed mode: score only the first N batches (default: the whole split)"}
    )
    rolling: bool = field(
        default=False, metadata={"help": "score whole documents with lm-evaluation-harness's rolling windows"}
    )
    json: bool = field(default=False, metadata={"help": "print one JSON object"})

    def __post_init__(self):
        check_options(self, {"block_size": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "eval_batches": AT_LEAST_ONE})


@command
def main(argv=None) -> None:
    options, corpus = parse([EvalOptions, CorpusSpec], argv, description=__doc__, positional="model_dir")
    if options.model_dir is None:
        raise ValueError("give the model folder: hf-attn-evaluate MODEL_DIR")
    if options.rolling and options.eval_batches is not None:
        raise ValueError("--eval-batches applies to packed mode; --rolling scores every document")
    m = evaluate_model(options.model_dir, corpus, options.block_size, options.batch_size, options.eval_batches,
                       rolling=options.rolling)  # fmt: skip
    if options.json:
        print(json.dumps(m, allow_nan=False))  # evaluate_model refuses a non-finite loss
        return
    unit = "window" if options.rolling else "block"
    print(f"validation loss  {m['val_loss']:.4f} nats/token ({m['eval_tokens']:,} tokens, {unit} {m['block_size']})")
    print(f"perplexity       {m['perplexity']:.3f}")
    print(f"bits per char    {m['bits_per_char']:.4f}")
    print(f"bits per byte    {m['bits_per_byte']:.4f}")
    if "word_perplexity" in m:
        print(f"word perplexity  {m['word_perplexity']:.3f}")


if __name__ == "__main__":
    main()
