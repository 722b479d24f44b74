"""Norm carriers: a few latent dims that hold the latent RMSNorm's denominator nearly constant.

MLA's `kv_a_layernorm` divides each token's latent by its RMS, and so scales that token's keys
and values by a factor no linear map undoes. `latent_factors` makes the latent's norm the length
of the unit-RMS attention input u = x / input_layernorm.weight projected on the kept subspace;
|u|^2 = hidden for every token, so what varies is only the share of u outside that subspace. On a
pretrained model that share varies a lot from token to token (most of all on the first token of a
sequence, an attention sink), and the per-token scale can collapse the model
(docs/convert/smollm2/report.md).

A carrier is a latent dim that kv_b_proj does not read (a zero column): it costs one cached value
and carries no key or value, only norm. The carriers are the top principal directions of the part
of u the kept subspace misses, which is where the missing norm lives; their weights are the least
squares fit that makes |latent|^2 = |kept|^2 + sum_j s_j (e_j . u)^2 as constant as possible over
the calibration tokens. Everything stays at the scale of an ordinary latent, so the converted model
fine-tunes (unlike `latent_norm="bypass"`, whose latent sits in the norm's eps regime).
"""

from __future__ import annotations

import torch

# Totals the carriers aim the latent's squared norm at, as multiples of the kept part's mean.
TARGETS = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0)


def norm_carriers(
    down: torch.Tensor, up: torch.Tensor, samples: torch.Tensor, gain: torch.Tensor, carriers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`down` (rank, hidden) and `up` (rows, rank) with `carriers` norm-carrying latent dims appended.

    `samples`: calibration attention inputs x (N, hidden); `gain`: input_layernorm.weight, x = gain * u.
    """
    if carriers == 0:
        return down, up
    u = samples / gain  # (N, hidden): unit-RMS inputs
    basis, _ = torch.linalg.qr((down * gain).T)  # (hidden, rank): the kept subspace in u's coordinates
    missed = u - (u @ basis) @ basis.T  # (N, hidden)
    _, _, vh = torch.linalg.svd(missed, full_matrices=False)
    directions = vh[:carriers]  # (carriers, hidden): where most of the missed norm lies
    # An SVD's signs are arbitrary (and the carriers' are unused, only squares count): fix them, so that
    # the same model converts to the same weights bit for bit
    directions = directions * torch.sign(directions.gather(1, directions.abs().argmax(dim=1, keepdim=True)))
    kept = (samples @ down.T).pow(2).sum(dim=1)  # (N,)
    squares = (u @ directions.T).pow(2)  # (N, carriers)
    best_spread, best_weights = None, None
    for factor in TARGETS:
        target = (factor * kept.mean() - kept)[:, None]
        weights = torch.linalg.lstsq(squares, target).solution.squeeze(1).clamp(min=0)  # (carriers,)
        total = kept + squares @ weights
        spread = (total.std() / total.mean()).item()
        if best_spread is None or spread < best_spread:
            best_spread, best_weights = spread, weights
    extra = directions / gain * best_weights.sqrt()[:, None]  # (carriers, hidden), as a map of x
    return torch.cat((down, extra)), torch.cat((up, up.new_zeros(up.shape[0], carriers)), dim=1)


def carrier_count(rank: int, hidden: int, calibrated: bool, latent_norm: str, requested: int | None) -> int:
    """How many of the `rank` latent dims carry norm: `requested`, or up to 4 for a calibrated "fit".

    None at rank = hidden_size, where the latent norm is already exact (`latent_factors`).
    """
    if requested is not None:
        if not 0 <= requested < rank:
            raise ValueError(f"latent_norm_carriers must be in 0..kv_lora_rank - 1 ({rank - 1}), got {requested}")
        if requested and (not calibrated or latent_norm != "fit"):
            raise ValueError('latent_norm_carriers needs calibration tokens and latent_norm="fit"')
        return requested
    return min(4, rank // 8, hidden - rank) if calibrated and latent_norm == "fit" else 0
