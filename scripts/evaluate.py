"""Evaluate a saved model: validation loss, perplexity, bits per character and bits per byte.

    python scripts/evaluate.py runs/mla                                    # the default corpus
    python scripts/evaluate.py runs/mla --text-files data.txt --split chars --json

Give the same data flags as the training run to score the same validation split.
"""

import argparse
import json

from hf_attn.data import add_data_args, spec_from_args
from hf_attn.evaluation import evaluate_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--block-size", type=int, default=None, help="default: the training run's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batches", type=int, default=None, help="default: the whole validation split")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_data_args(parser)
    args = parser.parse_args()
    m = evaluate_model(args.model_dir, spec_from_args(args), args.block_size, args.batch_size, args.eval_batches)
    if args.json:
        print(json.dumps(m))
    else:
        print(f"validation loss  {m['val_loss']:.4f} nats/token ({m['eval_tokens']:,} tokens, block {m['block_size']})")
        print(f"perplexity       {m['perplexity']:.3f}")
        print(f"bits per char    {m['bits_per_char']:.4f}")
        print(f"bits per byte    {m['bits_per_byte']:.4f}")


if __name__ == "__main__":
    main()
