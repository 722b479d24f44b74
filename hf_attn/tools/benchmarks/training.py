"""The training step the training benchmark times, and the MLP width its plain decoders share."""

from collections.abc import Callable

import torch


def swiglu_intermediate_size(hidden_size: int, multiple_of: int = 8) -> int:
    """4 * hidden * 2/3 rounded to the nearest multiple of `multiple_of`: a SwiGLU MLP with the
    parameter count of a 4x GELU MLP (Shazeer 2020; Llama rounds the same way, upwards, to 256)."""
    return multiple_of * round(4 * hidden_size * 2 / 3 / multiple_of)


def make_train_step(model: torch.nn.Module, input_ids: torch.Tensor, lr: float = 3e-4) -> Callable[[], float]:
    """One training step on a fixed batch: forward with labels, backward, AdamW step, zero_grad."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step() -> float:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step
