"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology", §3): recall, trained from scratch.

One example is `num_pairs` key-value pairs, then every key asked again once, in a random order, at random
places in the rest of the sequence, each query followed by its answer (teacher forcing):

    k1 v1 k2 v2 ... kn vn  _ _ k2 v2 _ _ _ kn vn _ k1 v1 _ ...      (_ is the filler token 0)

The labels are -100 everywhere except at the answers, so the loss (and the accuracy) is only on recalling a
value from its key seen earlier. Keys are drawn without replacement from their own range of the vocabulary,
values with replacement from another, so an answer is recoverable from the sequence and from nothing else.
The distance from a pair to its query spans the whole sequence: a query past the sliding window asks for a
pair the window no longer holds; the Performer must hold every pair in its constant state.

Every design trains once per seed on the same examples (the seed sets the initialisation and the data) with
the same small trunk, on a mixture of the grid's pair counts and lengths (Zoology trains on a mixture too),
and is then scored on held-out examples of each cell of the grid. See `hf-attn-mqar --help`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import get_cosine_schedule_with_warmup

FILLER = 0  # the token between the queries; keys and values have their own ranges after it


@dataclass(frozen=True)
class MqarTask:
    """The vocabulary: token 0 the filler, keys 1..key_vocab, values after them."""

    key_vocab: int = 64
    value_vocab: int = 64

    @property
    def vocab_size(self) -> int:
        return 1 + self.key_vocab + self.value_vocab

    def first_value(self) -> int:
        return 1 + self.key_vocab


def cell_name(num_pairs: int, seq_len: int) -> str:
    """A grid cell's name in results and reports: '8x128' is 8 pairs in 128 tokens."""
    return f"{num_pairs}x{seq_len}"


def check_cell(task: MqarTask, num_pairs: int, seq_len: int) -> None:
    """A grid cell must fit: the pairs (2n tokens) and the queries with their answers (2n) in seq_len."""
    if num_pairs < 1 or num_pairs > task.key_vocab:
        raise ValueError(f"MQAR: {num_pairs} pairs need 1 to key_vocab={task.key_vocab} distinct keys")
    if 4 * num_pairs > seq_len:
        raise ValueError(f"MQAR: {num_pairs} pairs need at least {4 * num_pairs} tokens, the length is {seq_len}")


def mqar_batch(
    task: MqarTask, num_pairs: int, seq_len: int, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` MQAR examples: input ids and labels, both (batch, seq_len); labels -100 but at the answers."""
    check_cell(task, num_pairs, seq_len)
    n = num_pairs
    keys = torch.rand(batch, task.key_vocab, generator=generator).argsort(-1)[:, :n] + 1  # (B, n) distinct
    values = torch.randint(task.first_value(), task.vocab_size, (batch, n), generator=generator)  # (B, n)
    ids = torch.full((batch, seq_len), FILLER, dtype=torch.long)
    ids[:, 0 : 2 * n : 2], ids[:, 1 : 2 * n : 2] = keys, values
    # The query slots: 2-token places after the pairs, n of them at random (sorted), keys in random order.
    slots = (seq_len - 2 * n) // 2
    chosen = torch.rand(batch, slots, generator=generator).argsort(-1)[:, :n].sort(-1).values  # (B, n)
    query_pos = 2 * n + 2 * chosen  # (B, n)
    order = torch.rand(batch, n, generator=generator).argsort(-1)  # (B, n): which pair each slot asks
    ids.scatter_(1, query_pos, keys.gather(1, order))
    ids.scatter_(1, query_pos + 1, values.gather(1, order))
    labels = torch.full_like(ids, -100)
    labels.scatter_(1, query_pos + 1, values.gather(1, order))
    return ids, labels


def recall_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, answers): the next-token argmax at each answer's query position against the answer."""
    predicted = logits[:, :-1].argmax(-1)  # (B, T-1): the prediction for position t + 1
    target = labels[:, 1:]  # (B, T-1)
    mask = target != -100
    return int((predicted[mask] == target[mask]).sum()), int(mask.sum())


@dataclass
class TrainSettings:
    """The optimiser and schedule every design trains with (the optimizer fields are hf-attn-train's,
    read by `hf_attn.train.optim.make_optimizer`)."""

    steps: int = 1500
    batch_tokens: int = 4096
    optimizer: str = "adamw"
    lr: float = 3e-3
    beta2: float = 0.98
    muon_lr: float = 0.02
    muon_weight_decay: float = 0.0
    muon_momentum: float = 0.95
    muon_adjust_lr: str = "original"
    warmup_steps: int = 100
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    short_steps: int = 0
    eval_every: int = 100
    eval_examples: int = 256


@torch.no_grad()
def evaluate_cells(model, task: MqarTask, cells: list[tuple[int, int]], examples: int, seed: int) -> dict:
    """Held-out accuracy per (pairs, length) cell: examples drawn from a generator the training never uses."""
    model.eval()
    scores = {}
    for num_pairs, seq_len in cells:
        generator = torch.Generator().manual_seed(10_000_019 + seed * 7919 + num_pairs * 131 + seq_len)
        correct = total = 0
        for start in range(0, examples, 64):
            ids, labels = mqar_batch(task, num_pairs, seq_len, min(64, examples - start), generator)
            c, t = recall_accuracy(model(input_ids=ids).logits, labels)
            correct, total = correct + c, total + t
        scores[cell_name(num_pairs, seq_len)] = correct / total
    model.train()
    return scores


def training_cell(cells: list[tuple[int, int]], step: int, short_steps: int) -> tuple[int, int]:
    """The cell of a training step: the first `short_steps` cycle through the cells of the shortest length
    (recall is learnt there first: fewer filler tokens dilute the attention), then through all of them."""
    if step <= short_steps:
        cells = [c for c in cells if c[1] == min(length for _, length in cells)]
    return cells[step % len(cells)]


def train_mqar_model(model, task, cells, settings: TrainSettings, seed: int, on_eval=None) -> list[dict]:
    """Train on the mixture of `cells` (one cell per step, `training_cell`); returns the learning curve
    (`on_eval(point)` sees each point as it is measured)."""
    from ...train.optim import make_optimizer

    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, settings)
    schedule = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.steps)
    curve, start, losses = [], time.perf_counter(), []
    model.train()
    for step in range(1, settings.steps + 1):
        num_pairs, seq_len = training_cell(cells, step, settings.short_steps)
        ids, labels = mqar_batch(task, num_pairs, seq_len, max(1, settings.batch_tokens // seq_len), generator)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % settings.eval_every == 0 or step == settings.steps:
            scores = evaluate_cells(model, task, cells, max(64, settings.eval_examples // 4), seed)
            mean = sum(scores.values()) / len(scores)
            curve.append(
                {
                    "step": step,
                    "train_loss": sum(losses) / len(losses),
                    "accuracy": scores,
                    "mean_accuracy": mean,
                    "elapsed_s": time.perf_counter() - start,
                }
            )
            losses = []
            if on_eval is not None:
                on_eval(curve[-1])
    return curve
