"""Validation loss, perplexity, bits per character and bits per byte of a causal LM.

The validation split is packed into blocks of `block_size` tokens (`data.pack_splits`). In every
block the model predicts tokens 2..T from their prefix, so a block contributes T - 1 predicted
tokens; `evaluate_loss` returns the mean negative log-likelihood (nats) over all predicted tokens
of the blocks it saw.

Bits per character: that mean is the per-token loss of the split, estimated on the tokens actually
evaluated (the first token of each block, the remainder that fills no block, and batches past
`max_batches` are not predicted). It is converted with the *whole split's* token and character
counts from `PackedData.stats`:

    bits_per_char = mean_loss * split_tokens / split_chars / ln 2

so a tokenizer with more characters per token is credited for it, and the estimate does not
depend on how many blocks were evaluated. Bits per byte use the UTF-8 byte count the same way.

`evaluate.load("perplexity")` is not used: it fetches its script from the Hub (there is no
offline copy here) and its `compute()` loads a model by id and re-tokenizes raw text, so it
cannot score packed blocks of a model held in memory. `perplexity` here is `exp(val_loss)`, its
definition; `tests/test_evaluation.py` checks the loop against an independent token-by-token
computation.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F

from .data import bits_per_byte, bits_per_char


@torch.no_grad()
def evaluate_loss(model, dataloader, accelerator=None, max_batches: int | None = None) -> tuple[float, int]:
    """Mean next-token NLL in nats over the blocks of `dataloader`, and the number of tokens it covers.

    With an `accelerator` (a prepared, sharded dataloader), per-block sums are gathered from every
    process with `gather_for_metrics`, which drops the blocks that were repeated to even out shards.
    """
    was_training = model.training
    model.eval()
    total_nll = 0.0
    total_tokens = 0
    for i, batch in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
        input_ids = batch["input_ids"] if isinstance(batch, dict) else batch
        logits = model(input_ids=input_ids).logits.float()  # (B, T, V)
        nll = F.cross_entropy(
            logits[:, :-1].transpose(1, 2),  # (B, V, T - 1): class dim second
            input_ids[:, 1:],  # (B, T - 1)
            reduction="none",
        ).sum(dim=1)  # (B,) summed NLL per block
        if accelerator is not None:
            nll = accelerator.gather_for_metrics(nll)
        total_nll += nll.double().sum().item()
        total_tokens += nll.numel() * (input_ids.shape[1] - 1)
    if was_training:
        model.train()
    if total_tokens == 0:
        raise ValueError("evaluation saw no tokens: the validation set is empty or max_batches is 0")
    return total_nll / total_tokens, total_tokens


def lm_metrics(mean_loss: float, split_stats: dict) -> dict:
    """val_loss, perplexity, bits_per_char and bits_per_byte of a mean loss on a split with `split_stats`."""
    return {
        "val_loss": mean_loss,
        "perplexity": math.exp(min(mean_loss, 700.0)),  # exp overflows a float past ~709
        "bits_per_char": bits_per_char(mean_loss, split_stats["tokens"], split_stats["chars"]),
        "bits_per_byte": bits_per_byte(mean_loss, split_stats["tokens"], split_stats["bytes"]),
    }


def evaluate_model(
    model_dir: str,
    spec,
    block_size: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: str | None = None,
) -> dict:
    """Load a saved model and its tokenizer from `model_dir` and evaluate it on the corpus `spec`.

    `block_size` defaults to the one the model was trained with (`train_args.json`, written by
    `training.train`), else to the model's `max_position_embeddings`. Returns `lm_metrics` plus
    eval_tokens and block_size.
    """
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data import build_lm_data

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if block_size is None:
        args_file = os.path.join(model_dir, "train_args.json")
        if os.path.isfile(args_file):
            with open(args_file) as f:
                block_size = json.load(f)["block_size"]
        else:
            block_size = model.config.max_position_embeddings
    data = build_lm_data(spec, tokenizer, block_size)
    loader = DataLoader(data.validation, batch_size=batch_size, shuffle=False)
    batches = ({"input_ids": b["input_ids"].to(device)} for b in loader)
    mean_loss, tokens = evaluate_loss(model, batches, max_batches=max_batches)
    return {**lm_metrics(mean_loss, data.stats["validation"]), "eval_tokens": tokens, "block_size": block_size}
