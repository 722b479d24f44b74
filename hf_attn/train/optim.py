"""The optimizer and the learning-rate schedule of a training run (`--optimizer`, `--lr-schedule`).

`--optimizer adamw` (the default) is one AdamW, weight decay on every matrix (linear and embedding
weights), none on norms and biases (nanoGPT's split).

`--optimizer muon` is torch's own `torch.optim.Muon` (Jordan et al. 2024, "Muon: an optimizer for
hidden layers in neural networks") on the 2-D weight matrices inside the decoder layers, and AdamW
on everything else, each with its own learning rate and weight decay. Which group a parameter goes
to is decided by where it sits and its shape (`muon_groups`), never by a design's name, so every
attention design is covered the same way:

- q/k/v/o and the MLP's gate/up/down projections: Muon (hidden-layer matrices, what Muon is for).
- MLA's low-rank factors (`q_a_proj`, `q_b_proj`, `kv_a_proj_with_mqa`, `kv_b_proj`): Muon, each
  factor orthogonalized on its own. They are hidden-layer matrices like any other; Muon on a
  factor keeps that factor's update well-conditioned, which is what the low rank needs.
  `kv_a_proj_with_mqa` is one matrix (the latent rows and the shared RoPE-key rows) and is
  orthogonalized as one, as the parameter is stored.
- The Performer's random features (`projection`, `feature_seed`, `forward_steps`) are buffers, not
  parameters: neither optimizer sees them, they are never trained, and the checkpoint carries them
  with the model's weights.
- Embeddings, the (tied) head, every norm and any bias: AdamW. The embedding is a lookup table
  and the head a classifier, not hidden-layer transforms (Muon's authors keep both on AdamW).

The two optimizers are held by one `MuonWithAdamW` so that accelerate, the schedule, gradient
accumulation, mixed precision (its gradient scaler unscales once) and checkpoints see one
optimizer: `state_dict()` is `{"muon": ..., "adamw": ...}`, saved as `optimizer.bin` and restored
exactly on resume. Under several processes (DDP) each process applies the same update to the same
all-reduced gradients. Under `--fsdp` Muon is refused (`options`): FSDP2 shards each matrix over
the processes, and Muon's Newton-Schulz step needs the whole matrix.
"""

from __future__ import annotations

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup, get_wsd_schedule

OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULES = ("cosine", "wsd")


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon on some parameters and torch's AdamW on the others, stepped as one optimizer.

    Its `param_groups` are the two optimizers' own group dicts (AdamW's first, so the logged `lr`
    stays AdamW's), so an LR scheduler built on it sets each group's rate from its own base rate.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__([*adamw.param_groups, *muon.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # torch's load_state_dict replaces the group dicts: point at the new ones
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]


def muon_groups(model: torch.nn.Module) -> tuple[list, list]:
    """(named parameters for Muon, named parameters for AdamW) of a model built by hf_attn.

    Muon: the 2-D parameters inside `model.base_model.layers` (the decoder layers). AdamW: the rest.
    """
    in_layers = {id(p) for p in model.base_model.layers.parameters()}
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (muon if id(p) in in_layers and p.ndim == 2 else adamw).append((name, p))
    return muon, adamw


def _adamw(params: list[torch.nn.Parameter], args) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear and embedding weights) only, not on norms (nanoGPT)."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2))


def make_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    """The run's optimizer per `args.optimizer` (see the module docstring)."""
    if args.optimizer == "adamw":
        return _adamw([p for p in model.parameters() if p.requires_grad], args)
    matrices, rest = muon_groups(model)
    muon = torch.optim.Muon(
        [p for _, p in matrices],
        lr=args.muon_lr,
        weight_decay=args.muon_weight_decay,
        momentum=args.muon_momentum,
        adjust_lr_fn=args.muon_adjust_lr,
    )
    return MuonWithAdamW(muon, _adamw([p for _, p in rest], args))


def make_schedule(optimizer: torch.optim.Optimizer, args, max_steps: int):
    """The learning-rate schedule, one multiplier for every group's own peak rate.

    cosine: linear warm-up, then cosine decay to `min_lr_ratio` (transformers' schedule).
    wsd: warm-up, stable at the peak, then a linear decay to `min_lr_ratio` over the last
    `decay_fraction` of the steps (Hägele et al. 2024, "Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations"; transformers' `get_wsd_schedule`).
    """
    warmup = min(args.warmup_steps, max_steps)
    if args.lr_schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, max_steps, min_lr_rate=args.min_lr_ratio)
    decay = min(max(1, round(args.decay_fraction * max_steps)), max_steps - warmup)
    return get_wsd_schedule(
        optimizer,
        num_warmup_steps=warmup,
        num_decay_steps=decay,
        num_stable_steps=max_steps - warmup - decay,
        decay_type="linear",
        min_lr_ratio=args.min_lr_ratio,
    )
