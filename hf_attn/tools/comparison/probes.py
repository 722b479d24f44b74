"""Probes of a trained language model that ask for context far back: loss by position, and copying.

- Loss by token position: the validation blocks' next-token loss, averaged over buckets of positions
  (0–32, 32–128, 128–512 at a 512-token block: `position_edges`). A design whose view of the past is cut
  (a sliding window) or compressed (a constant state) gains less from the far positions than full attention.
- Copying ("Repeat After Me", Jelassi et al., 2024): a segment of d random tokens (drawn from the tokens of
  the validation blocks, seeded), then the same d tokens again. Random tokens are unpredictable the first
  time, so a lower loss on the second copy can only come from looking d tokens back and copying; at a
  distance past the sliding window the window no longer holds the first copy. The same on a held-out
  passage (each block's first d tokens, twice) shows it on text, where the first copy is predictable too.

Both take validation blocks as a (N, block) tensor of token ids and return plain numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_edges(block_size: int) -> tuple[int, ...]:
    """Bucket edges 0, block/16, block/4, block: 0–32, 32–128, 128–512 at a 512-token block."""
    inner = [e for e in (block_size // 16, block_size // 4) if e > 1]  # [0, e) must hold position 1
    return tuple(dict.fromkeys([0, *inner, block_size]))


def copy_distances(block_size: int) -> tuple[int, int]:
    """The copy probe's distances: block/8 (inside the comparison's block/4 window) and block/2 (past it)."""
    return (max(block_size // 8, 2), block_size // 2)


@torch.no_grad()
def token_losses(model, blocks: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Next-token NLL in nats, (N, T - 1): column t is the loss of predicting token t + 1 from tokens 0..t."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size]
        logits = model(input_ids=ids).logits.float()  # (B, T, V)
        parts.append(F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"))  # (B, T-1)
    if was_training:
        model.train()
    return torch.cat(parts)


def position_losses(nll: torch.Tensor, edges: tuple[int, ...]) -> list[dict]:
    """Mean loss per bucket of predicted-token positions [lo, hi) (position 0 is never predicted), with the
    per-block means, so that seeds and designs can be compared block by block."""
    positions = torch.arange(1, nll.shape[1] + 1)  # column t predicts position t + 1
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        cols = (positions >= lo) & (positions < hi)
        per_block = nll[:, cols].double().mean(1)  # (N,)
        buckets.append({"from": lo, "to": hi, "loss": float(per_block.mean()), "tokens": int(cols.sum()) * len(nll)})
    return buckets


def copy_probe(model, blocks: torch.Tensor, distances: tuple[int, ...], batch_size: int = 8) -> list[dict]:
    """Per distance d: each block's first d tokens, then the same d tokens again (2d <= block). Mean loss on
    the first copy (positions 1..d-1) and on the second (d..2d-1), and their ratio (1: no copying)."""
    probes = []
    for d in distances:
        if 2 * d > blocks.shape[1]:
            raise ValueError(f"copy probe: distance {d} needs blocks of at least {2 * d} tokens")
        segment = blocks[:, :d]  # (N, d)
        nll = token_losses(model, torch.cat([segment, segment], dim=1), batch_size)  # (N, 2d - 1)
        first, second = float(nll[:, : d - 1].double().mean()), float(nll[:, d - 1 :].double().mean())
        probes.append({"distance": d, "first_copy_loss": first, "second_copy_loss": second, "ratio": second / first})
    return probes


def random_segments(blocks: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Blocks of the same shape whose tokens are drawn uniformly from the tokens that occur in `blocks`."""
    tokens = blocks.unique()
    generator = torch.Generator().manual_seed(seed)
    return tokens[torch.randint(len(tokens), blocks.shape, generator=generator)]


def probe_model(model, blocks: torch.Tensor, block_size: int, batch_size: int = 8) -> dict:
    """The probes on validation blocks: loss by position, and copying at `copy_distances` of random
    segments ("copy") and of the blocks' own text ("copy_passage")."""
    distances = copy_distances(block_size)
    return {
        "position_loss": position_losses(token_losses(model, blocks, batch_size), position_edges(block_size)),
        "copy": copy_probe(model, random_segments(blocks), distances, batch_size),
        "copy_passage": copy_probe(model, blocks, distances, batch_size),
    }
