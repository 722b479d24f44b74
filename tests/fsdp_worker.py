"""Run under `torchrun --nproc_per_node 2` by tests/test_fsdp.py: FSDP2 steps for every design.

Each process shards a seeded tiny model with `hf_attn.train.sharding.shard_model` (the function
`hf-attn-train --fsdp` calls), trains it on its half of a fixed global batch, then gathers the full
weights with `consolidated_model`. Rank 0 writes the losses, the local parameter bytes and the
consolidated model's logits on fixed tokens to OUT (torch.save), for the test to compare with the
same steps in one process on the whole batch (`steps` below, imported by the test).
"""

import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch.distributed.tensor import DTensor

from hf_attn import ATTENTION_TYPES, HfAttnConfig, HfAttnForCausalLM
from hf_attn.train.sharding import consolidated_model, local_bytes, shard_model

STEPS, BATCH, SEQ = 6, 4, 32


def tokens(seed: int, batch: int = BATCH) -> torch.Tensor:
    """Rows counting up from a random start (mod 256): a pattern the loss falls on within a few steps."""
    starts = torch.randint(0, 256, (batch, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(SEQ)) % 256  # (batch, SEQ)


def build(attention_type: str) -> HfAttnForCausalLM:
    torch.manual_seed(0)
    # MLA ties its embeddings, the rest keep a separate head: both of transformers' head plans run
    config = HfAttnConfig.from_preset(
        "tiny", attention_type=attention_type, tie_word_embeddings=attention_type == "mla"
    )
    return HfAttnForCausalLM(config)


def steps(model, part: slice, accelerator=None) -> tuple[list[float], torch.optim.Optimizer]:
    """STEPS AdamW steps on rows `part` of each step's global batch; the mean loss over processes."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(STEPS):
        ids = tokens(step)[part]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if accelerator is not None:
            loss = accelerator.reduce(loss.detach(), "mean")
        losses.append(loss.item())
    return losses, optimizer


def main(out: str) -> None:
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    results = {}
    for attention_type, precision in [(t, "no") for t in ATTENTION_TYPES] + [("mla", "bf16")]:
        model = build(attention_type)
        full_bytes = local_bytes(model)["parameter_bytes"]
        model = shard_model(model, world, precision)
        losses, optimizer = steps(model, part, accelerator)
        held = local_bytes(model, optimizer)
        plain, _ = consolidated_model(model, model.config, accelerator.is_main_process)
        if accelerator.is_main_process:
            with torch.no_grad():
                logits = plain(input_ids=tokens(99, 2)).logits
            results[f"{attention_type}-{precision}"] = {
                "losses": losses,
                "logits": logits,
                "all_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
                "full_parameter_bytes": full_bytes,
                **held,
            }
    if accelerator.is_main_process:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
