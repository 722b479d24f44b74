"""Train an hf_attn model (logic in hf_attn/training.py).

    python scripts/train.py --attention-type mla --preset small --max-steps 500 --output-dir runs/mla
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py ...   # same flags, data parallel
    python scripts/train.py --output-dir runs/mla --resume                  # continue after a kill
"""

import argparse
import json

from hf_attn.training import add_train_args, train, train_args_from_namespace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(parser)
    result = train(train_args_from_namespace(parser.parse_args()))
    if result["sample"] is not None:  # the main process
        keys = ("model_dir", "params", "kv_cache_bytes_per_token", "steps", "tokens", "val_loss", "perplexity",
                "val_bits_per_char", "val_bits_per_byte", "train_tokens_per_s", "wall_s", "peak_memory_bytes")
        print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
