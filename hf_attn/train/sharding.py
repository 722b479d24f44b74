"""`hf-attn-train --fsdp`: torch's FSDP2 over the processes of a torchrun launch, on CPU or GPU.

    torchrun --nproc_per_node 2 -m hf_attn.cli.train --fsdp ...      # CPU: gloo

What shards is transformers' FSDP2 plan for the model (`HfAttnForCausalLM.fsdp_plan`: the config's
`base_model_fsdp_plan`, one `fully_shard` per decoder layer, and the class's `_fsdp_plan` for the
head), applied by transformers' own `maybe_distribute_model`, as `from_pretrained(distributed_config=
DistributedConfig(fsdp_size=N))` does; with `--mixed-precision bf16`, its `fsdp_mixed_precision`
policy (bf16 parameters for compute, float32 gradient reduction). accelerate keeps the devices, the
data sharding, gradient accumulation, the schedule, RNG states and logging, but the model and the
optimizer are not passed to `accelerator.prepare`: accelerate 1.15 takes its FSDP branch only for
accelerator devices, and on CPU (MULTI_CPU) it refuses a model with DTensor parameters for DDP.

Checkpoints are sharded: `checkpoint-STEP/fsdp/` is a torch.distributed.checkpoint (DCP) folder of
the model and AdamW state, one `.distcp` file per process plus `.metadata`, beside accelerate's
`save_state` files. The loop writes it into `tmp-checkpoint-STEP` and renames it only after every
process has finished, so a process that dies mid-save leaves only a temporary folder, which
`--resume` ignores and removes. The final save is consolidated (`full_state_dict`): an ordinary
folder that `from_pretrained` loads.
"""

from __future__ import annotations

import os

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers.distributed import DistributedConfig

from ..model.modeling_hf_attn import HfAttnForCausalLM
from ..utils import HfAttnError

SHARDED_DIR = "fsdp"  # inside checkpoint-STEP: the DCP folder of the model and optimizer shards


def check_launch(num_processes: int, mixed_precision: str) -> None:
    """Refuse a --fsdp run that cannot shard: one process, or fp16 (called before anything is written)."""
    if num_processes < 2:
        raise HfAttnError(
            "--fsdp shards over several processes, and this run has one: launch it with "
            "`torchrun --nproc_per_node N -m hf_attn.cli.train --fsdp ...` (N >= 2)"
        )
    if mixed_precision == "fp16":
        raise HfAttnError(
            "--fsdp with --mixed-precision fp16: transformers' FSDP2 mixed precision is bf16 "
            "(bf16 parameters, float32 gradient reduction); give --mixed-precision bf16 or no"
        )


def shard_model(model: HfAttnForCausalLM, num_processes: int, mixed_precision: str) -> HfAttnForCausalLM:
    """`model` with its parameters sharded over the `num_processes` of the process group (DTensors).

    The plan is transformers' (`_resolve_parallel_plans`: the model's `fsdp_plan` checked against
    its modules, the tied head folded into the embedding's rule, expanded per layer). It is applied
    as transformers' `apply_fully_sharded_data_parallelism` applies it, with one difference: a tied
    head joins its embedding's `fully_shard` group. transformers 5.24 shards before it ties weights
    (at load time); a model that is already tied, as a freshly built one, would otherwise hold one
    weight in two groups, which FSDP2 refuses. Every process must hold the same weights.
    """
    check_launch(num_processes, mixed_precision)
    _, _, plan = model._resolve_parallel_plans(DistributedConfig(fsdp_size=num_processes))
    mesh = init_device_mesh(model.device.type, (num_processes,), mesh_dim_names=("fsdp",))
    policy = {"mesh": mesh}
    if mixed_precision == "bf16":  # transformers' `fsdp_mixed_precision` policy
        policy["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    keep = [model.get_submodule(name) for name, style in plan.items() if style == "keep_full_weight"]
    head = model.get_output_embeddings()
    if model.all_tied_weights_keys and model.get_input_embeddings() in keep and head not in keep:
        keep.append(head)
    for name, style in plan.items():  # deepest first, as transformers orders them
        if style == "free_full_weight":
            fully_shard(model.get_submodule(name), reshard_after_forward=True, **policy)
    if keep:  # the final norm and the head (or tied embedding): gathered once for forward and backward
        fully_shard(keep, reshard_after_forward=False, **policy)
    fully_shard(model, **policy)
    model._is_fsdp_managed_module = True  # as transformers marks it (generate then syncs the processes)
    return model


def local_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this process holds of the parameters and of the optimizer state (local shards only)."""

    def size(t: torch.Tensor) -> int:
        local = t.to_local() if hasattr(t, "to_local") else t
        return local.numel() * local.element_size()

    states = optimizer.state.values() if optimizer is not None else []
    return {
        "parameter_bytes": sum(size(p) for p in model.parameters()),
        "optimizer_bytes": sum(size(v) for s in states for v in s.values() if torch.is_tensor(v) and v.dim() > 0),
    }


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: str) -> None:
    """Every process writes its shards of the model and optimizer state into `folder/fsdp` (a collective)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=os.path.join(folder, SHARDED_DIR))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: str) -> None:
    """Read the shards `save_sharded` wrote (DCP reshards if the process count changed; shapes are checked)."""
    path = os.path.join(folder, SHARDED_DIR)
    if not os.path.isdir(path):
        raise HfAttnError(
            f"--resume --fsdp: {folder} holds no sharded state ({SHARDED_DIR}/); it was written without --fsdp, "
            "so resume it without --fsdp; nothing was changed"
        )
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def consolidated_model(model: torch.nn.Module, config, is_main: bool) -> tuple[torch.nn.Module, dict]:
    """For the final save: on the main process an unsharded copy with the full weights and its state dict.

    Every process must call it (the gather is a collective); the others get back the sharded model,
    for counting parameters only, and an empty state dict.
    """
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return model, {}
    plain = HfAttnForCausalLM(config)
    plain.load_state_dict(full)
    return plain, plain.state_dict()


def check_checkpoint_kind(folder: str, fsdp: bool) -> None:
    """Refuse to resume a sharded checkpoint without --fsdp (the reverse is `load_sharded`'s check)."""
    if not fsdp and os.path.isdir(os.path.join(folder, SHARDED_DIR)):
        raise HfAttnError(
            f"--resume: {folder} holds sharded state ({SHARDED_DIR}/) written with --fsdp; resume it with "
            "`torchrun --nproc_per_node N -m hf_attn.cli.train --fsdp ... --resume`; nothing was changed"
        )
