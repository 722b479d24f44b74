"""Recovery after an MLA conversion: each layer's new attention fitted to the source layer's outputs.

`convert_to_mla` factors each layer from its weights and input statistics alone; what it cannot
represent exactly (the latent RMSNorm's per-token scale, the keys that lose their rotation when
several K/V heads share one RoPE key, the rank) leaves an error that grows through the layers. A
full fine-tune (`hf-attn-train --init-from`) repairs it, but needs a backward pass through the
whole network. Here each layer is repaired on its own, as GPTQ and other post-training methods
do with a layer-wise objective: on calibration tokens, the source's attention input x_l and output
y_l = attn_src(x_l) are recorded in one forward pass of the source, then every parameter of the
converted layer's attention (q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj) is
moved by Adam to lower

    |attn_mla(x_l) - y_l|^2 / |y_l|^2

with a backward pass through that one attention block only (no MLP, no other layer, no LM head),
which fits a 2-core CPU. The layers are independent (each sees the source's own inputs), so the
step needs no ordering; `fit_layer` keeps the best parameters seen, so a layer never ends worse
than the conversion left it on the calibration tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ...model.modeling_hf_attn import HfAttnForCausalLM
from .convert import as_hf_attn, attention_input, run_with_attention_hooks


@dataclass
class RecoveryOptions:
    """How `hf-attn-convert` fits each converted attention layer to the source layer's outputs."""

    _argument_group_name = "recovery"

    recovery_steps: int = field(
        default=0, metadata={"help": "Adam steps per layer fitting the MLA attention to the source's outputs; 0: off"}
    )
    recovery_tokens: int = field(
        default=8192, metadata={"help": "train-split tokens whose source attention inputs and outputs are fitted"}
    )
    recovery_lr: float = field(default=2e-4, metadata={"help": "Adam learning rate of the recovery (cosine decay)"})
    recovery_batch_size: int = field(default=4, metadata={"help": "calibration sequences per recovery step"})


@dataclass
class LayerRecord:
    """One source attention layer's inputs and outputs on the calibration tokens: (N, T, hidden) each."""

    inputs: torch.Tensor
    outputs: torch.Tensor
    mask: torch.Tensor | None


@torch.no_grad()
def record_attention(source: HfAttnForCausalLM, input_ids: torch.Tensor, batch_size: int = 8) -> list[LayerRecord]:
    """Every layer's attention input (after input_layernorm) and output on `input_ids` (N, T), in float32."""
    layers = source.model.layers
    inputs, outputs, masks = ([[] for _ in layers] for _ in range(3))

    def hook(index):
        def record(module, args, kwargs, output):
            inputs[index].append(attention_input(args, kwargs).float())
            outputs[index].append(output[0].float())
            masks[index].append(kwargs.get("attention_mask"))

        return record

    run_with_attention_hooks(source, input_ids, batch_size, hook)
    # Unpadded calibration rows: the mask (if the kernel needs one) is the same causal mask for every chunk.
    return [LayerRecord(torch.cat(x), torch.cat(y), m[0]) for x, y, m in zip(inputs, outputs, masks)]


def _relative_error(attn, record: LayerRecord, rotary, rows: torch.Tensor) -> torch.Tensor:
    """|attn(x) - y|^2 / |y|^2 over the calibration rows `rows`."""
    x, y = record.inputs[rows], record.outputs[rows]
    mask = None if record.mask is None else record.mask[:1].expand(len(rows), *record.mask.shape[1:])
    cos, sin = rotary
    got = attn(x, position_embeddings=(cos[: len(rows)], sin[: len(rows)]), attention_mask=mask)[0]
    return (got - y).pow(2).sum() / y.pow(2).sum()


def _full_error(attn, record: LayerRecord, rotary, batch_size: int) -> float:
    with torch.no_grad():
        errors = [
            _relative_error(attn, record, rotary, rows) * record.outputs[rows].pow(2).sum()
            for rows in torch.arange(len(record.inputs)).split(batch_size)
        ]
        return math.sqrt(sum(errors).item() / record.outputs.pow(2).sum().item())


def fit_layer(attn, record: LayerRecord, rotary, options: RecoveryOptions, seed: int = 0) -> tuple[float, float]:
    """Adam on one attention block's parameters; returns its relative output error (before, after)."""
    params = list(attn.parameters())
    dtypes = [p.dtype for p in params]
    attn.float()
    before = best = _full_error(attn, record, rotary, options.recovery_batch_size)
    best_state = {k: v.detach().clone() for k, v in attn.state_dict().items()}
    optimizer = torch.optim.Adam(params, lr=options.recovery_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / options.recovery_steps))
    )
    generator = torch.Generator().manual_seed(seed)
    rows_total = len(record.inputs)
    with torch.enable_grad():
        for _ in range(options.recovery_steps):
            rows = torch.randperm(rows_total, generator=generator)[: options.recovery_batch_size]
            loss = _relative_error(attn, record, rotary, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    after = _full_error(attn, record, rotary, options.recovery_batch_size)
    if after < best:
        best = after
    else:
        attn.load_state_dict(best_state)
    for p, dtype in zip(params, dtypes):
        p.data = p.data.to(dtype)
    return before, best


def recover_attention(source, converted: HfAttnForCausalLM, input_ids: torch.Tensor, options: RecoveryOptions) -> dict:
    """Fit every attention layer of `converted` to `source`'s on `input_ids` (N, T), in place; returns the record.

    The record holds per layer the relative attention-output error on those tokens before and after,
    and the seconds taken.
    """
    if options.recovery_steps < 1:
        raise ValueError(f"recovery_steps must be >= 1 to recover, got {options.recovery_steps}")
    start = time.perf_counter()
    source = as_hf_attn(source)
    records = record_attention(source, input_ids)
    positions = torch.arange(input_ids.shape[1], device=converted.device)[None]
    rotary = converted.model.rotary_emb(records[0].inputs[:1], positions)
    rotary = tuple(r.float().expand(options.recovery_batch_size, *r.shape[1:]) for r in rotary)
    was_training = converted.training
    converted.eval()  # no dropout in the fit
    errors = []
    for index, (layer, record) in enumerate(zip(converted.model.layers, records)):
        errors.append(fit_layer(layer.self_attn, record, rotary, options, seed=index))
        records[index] = None  # free the layer's activations as soon as it is fitted
    converted.train(was_training)
    return {
        "recovery_steps": options.recovery_steps,
        "recovery_tokens": input_ids.numel(),
        "recovery_lr": options.recovery_lr,
        "attention_errors_before": [b for b, _ in errors],
        "attention_errors_after": [a for _, a in errors],
        "seconds": time.perf_counter() - start,
    }


def recover_folder(options, recovery: RecoveryOptions, corpus) -> dict:
    """Recover the MLA folder `convert_folder` wrote for `options` in place; conversion.json gains the record."""
    import json
    import os

    from ...loading import load_model
    from .convert import MARKER, attention_errors, calibration_ids, load_source

    source, tokenizer = load_source(options.source)
    if tokenizer is None:
        raise ValueError(f"{options.source} has no tokenizer to take recovery tokens with")
    converted = load_model(options.output_dir, HfAttnForCausalLM, dtype=source.dtype)
    block = min(options.calibration_block_size, source.config.max_position_embeddings)
    input_ids = calibration_ids(tokenizer, corpus, recovery.recovery_tokens, block)
    record = recover_attention(source, converted, input_ids, recovery)
    converted.save_pretrained(options.output_dir)
    path = os.path.join(options.output_dir, MARKER)
    with open(path) as f:
        conversion = json.load(f)
    conversion["recovery"] = record
    conversion["attention_errors"] = attention_errors(source, converted, input_ids[:2])
    with open(path, "w") as f:
        json.dump(conversion, f, indent=2)
    return conversion
