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

Rolling mode (`evaluate_rolling`): lm-evaluation-harness's context rule for perplexity tasks
(`loglikelihood_rolling`). Every document is scored on its own, every one of its tokens counted:
the first from a prefix token (BOS, else EOS), then windows of `max_length` predicted tokens, each
token seeing the tokens before it in its window (the last window is filled with earlier context).
No EOS is scored and no context crosses documents, so it reads lower context on average than a
packed block and scores a slightly different set of tokens; `docs/integrations.md` compares the two.

The metrics themselves come from `hf_attn/train/metrics/lm_perplexity.py`, an `evaluate`
metric module loaded offline from the package (`evaluate.load(LM_PERPLEXITY_METRIC)`); the hosted
`evaluate.load("perplexity")` is not used: it fetches its script from the Hub and loads a model by
id itself. `tests/test_evaluation.py` checks the loops against token-by-token computations.
"""

from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F

from ..loading import load_model_and_tokenizer, read_json_object
from ..utils import HfAttnError
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


def rolling_windows(tokens: list[int], prefix_id: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-evaluation-harness's rolling windows over one document: (input ids, the ids its last positions predict).

    Written out here rather than imported so that hf_attn does not depend on lm-eval;
    `tests/test_lm_eval.py` checks it against `lm_eval.utils.get_rolling_token_windows`. The last
    `len(targets)` inputs of a window predict `targets`; earlier inputs are context only.
    """
    if max_length < 1:
        raise ValueError(f"max_length={max_length}: must be at least 1")
    windows, done = [], 0
    while done < len(tokens):
        end = done + min(max_length, len(tokens) - done)
        if done == 0:  # the first window starts from the prefix token
            windows.append(([prefix_id, *tokens[: end - 1]], tokens[:end]))
        else:  # later windows: up to max_length inputs, the earliest only context
            windows.append((tokens[max(0, end - max_length - 1) : end - 1], tokens[done:end]))
        done = end
    return windows


@torch.no_grad()
def evaluate_rolling(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 8):
    """Summed NLL (nats) and scored token count of each document in `texts`, under `rolling_windows`' rule.

    Windows are batched with right padding: under a causal mask, pads after a window change none of
    its logits, so no attention mask is needed.
    """
    was_training = model.training
    model.eval()
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    windows = []  # (document index, input ids, target ids)
    for doc, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows += [(doc, inputs, targets) for inputs, targets in rolling_windows(ids, prefix_id, max_length)]
    nll, counts = [0.0] * len(texts), [0] * len(texts)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        width = max(len(inputs) for _, inputs, _ in batch)
        input_ids = torch.full((len(batch), width), prefix_id, dtype=torch.long)  # (B, T), right-padded
        for row, (_, inputs, _) in enumerate(batch):
            input_ids[row, : len(inputs)] = torch.tensor(inputs)
        logprobs = torch.log_softmax(model(input_ids=input_ids.to(device)).logits.double(), dim=-1)  # (B, T, V)
        for row, (doc, inputs, targets) in enumerate(batch):
            positions = torch.arange(len(inputs) - len(targets), len(inputs), device=device)
            picked = logprobs[row, positions, torch.tensor(targets, device=device)]  # (n,)
            nll[doc] -= picked.sum().item()
            counts[doc] += len(targets)
    if was_training:
        model.train()
    return nll, counts


def evaluate_model(
    model_dir: str,
    spec,
    block_size: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: str | None = None,
    rolling: bool = False,
) -> dict:
    """Load a saved model and its tokenizer from `model_dir` and evaluate it on the validation split of `spec`.

    `block_size` (the window in rolling mode) defaults to the one the model was trained with
    (`train_args.json`), else to the model's `max_position_embeddings`. Packed mode scores blocks
    (`evaluate_loss`, at most `max_batches`); rolling mode scores every document whole
    (`evaluate_rolling`). Returns val_loss, perplexity, bits_per_char, bits_per_byte, eval_tokens,
    block_size and mode; rolling mode adds word_perplexity, as lm-evaluation-harness defines it.
    """
    import evaluate
    from torch.utils.data import DataLoader

    from .data import build_lm_data, load_text_splits
    from .metrics import LM_PERPLEXITY_METRIC

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    model, tokenizer = load_model_and_tokenizer(
        model_dir, dtype=torch.float32, device=device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    block_size = block_size or _trained_block_size(model_dir) or model.config.max_position_embeddings
    metric = evaluate.load(LM_PERPLEXITY_METRIC)
    if rolling:
        texts = list(load_text_splits(spec)["validation"]["text"])
        nll, counts = evaluate_rolling(model, tokenizer, texts, block_size, batch_size)
        metric.add_batch(nll=nll, tokens=counts)
        size = {"chars": sum(map(len, texts)), "bytes": sum(len(t.encode("utf-8")) for t in texts)}
        words = sum(len(re.split(r"\s+", t)) for t in texts)  # the harness's word count (wikitext task)
        extra = {"word_perplexity": math.exp(min(sum(nll) / words, 700.0))}
    else:
        data = build_lm_data(spec, tokenizer, block_size)
        loader = DataLoader(data.validation, batch_size=batch_size, shuffle=False)
        batches = ({"input_ids": b["input_ids"].to(model.device)} for b in loader)
        mean_loss, tokens = evaluate_loss(model, batches, max_batches=max_batches)
        metric.add(nll=mean_loss * tokens, tokens=tokens)
        stats = data.stats["validation"]
        size = {"chars": stats["chars"], "bytes": stats["bytes"], "text_tokens": stats["tokens"]}
        extra = {}
    result = metric.compute(**size)
    if not math.isfinite(result["val_loss"]):
        raise HfAttnError(f"{model_dir}: the validation loss is {result['val_loss']} (the logits are not finite)")
    return {
        **{k: result[k] for k in ("val_loss", "perplexity", "bits_per_char", "bits_per_byte")},
        **extra,
        "eval_tokens": result["scored_tokens"],
        "block_size": block_size,
        "mode": "rolling" if rolling else "packed",
    }


def _trained_block_size(model_dir: str) -> int | None:
    """The block size in the run's `train_args.json`, if the folder is a training run's."""
    args_file = os.path.join(model_dir, "train_args.json")
    if not os.path.isfile(args_file):
        return None
    return read_json_object(args_file).get("block_size")
