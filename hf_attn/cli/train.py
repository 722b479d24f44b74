"""Train an hf_attn model (the loop is `hf_attn.train.loop`).

hf-attn-train --attention-type mla --preset small --max-steps 500 --output-dir runs/mla
hf-attn-train --preset tiny --config-overrides num_hidden_layers=3,kv_lora_rank=32 --attention-type mla
accelerate launch --multi_gpu --num_processes 2 -m hf_attn.cli.train ...   # same flags, data parallel
torchrun --nproc_per_node 2 -m hf_attn.cli.train --fsdp ...                # FSDP2-sharded (CPU: gloo)
hf-attn-train --output-dir runs/mla --resume                  # continue after a kill
hf-attn-train ... --push-to-hub --repo-id USER/NAME           # share the run when it has finished
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..tools.hub import HubOptions
from ..train.data import CorpusSpec
from ..train.loop import train
from ..train.options import ModelOptions, TrainArgs, TrainOptions
from .base import command, parse

SUMMARY_KEYS = (
    "model_dir",
    "params",
    "kv_cache_bytes_per_token",
    "steps",
    "tokens",
    "val_loss",
    "perplexity",
    "val_bits_per_char",
    "val_bits_per_byte",
    "train_tokens_per_s",
    "wall_s",
    "peak_memory_bytes",
)


@dataclass
class PushOption:
    _argument_group_name = "hub"

    push_to_hub: bool = field(default=False, metadata={"help": "upload the run folder when training has finished"})


@command
def main(argv=None) -> None:
    model, corpus, options, push, hub = parse(
        [ModelOptions, CorpusSpec, TrainOptions, PushOption, HubOptions], argv, description=__doc__
    )
    if push.push_to_hub and not hub.repo_id:
        raise ValueError("--push-to-hub needs --repo-id")
    result = train(TrainArgs.from_parts(options, model, corpus))
    if result["sample"] is None:  # not the main process
        return
    print(json.dumps({k: result[k] for k in SUMMARY_KEYS}, indent=2, allow_nan=False))  # a diverged run raised
    if push.push_to_hub:
        url = hub.push(result["model_dir"])
        print(f"Uploaded to {url}")


if __name__ == "__main__":
    main()
