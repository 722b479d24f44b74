"""Byte-level BPE tokenizer training, with the `tokenizers` library.

The tokenizer is GPT-2's recipe without its lossy parts: no normalizer, a ByteLevel
pre-tokenizer with `add_prefix_space=False`, and a ByteLevel decoder, so that
`decode(encode(x)) == x` for every Unicode string and no token is ever unknown (every byte
is in the initial alphabet). It is saved as a transformers fast tokenizer, which
`AutoTokenizer.from_pretrained` loads without custom code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .data import CorpusSpec, load_text_splits

EOS_TOKEN = "<|endoftext|>"  # also BOS: one separator between documents, as in GPT-2
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]  # ids 0 and 1
# Large on purpose: the tokenizer itself puts no limit on sequence length; the model's
# max_position_embeddings does.
MODEL_MAX_LENGTH = 1_000_000_000


def build_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    show_progress: bool = True,
    length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it as a transformers fast tokenizer.

    `length` is the number of texts, for the progress bar only.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    tok = Tokenizer(models.BPE())  # no unk_token: the byte alphabet covers every input
    tok.normalizer = None  # normalization (NFC, lowercasing) would break the exact round trip
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False)
    # The post-processor only adjusts offsets; keep them untrimmed so they cover every byte.
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
        # transformers' cleanup turns " ." into "." on decode; the round trip must be exact.
        clean_up_tokenization_spaces=False,
    )


def chars_per_token(tokenizer, texts: Iterable[str], batch_size: int = 256) -> tuple[int, int]:
    """Return (characters, tokens) of `texts` under `tokenizer`, without special tokens."""
    chars = tokens = 0
    for batch in _batches(texts, batch_size):
        chars += sum(len(t) for t in batch)
        enc = tokenizer(batch, add_special_tokens=False)["input_ids"]
        tokens += sum(len(ids) for ids in enc)
    return chars, tokens


def train_tokenizer(
    spec: CorpusSpec,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    output_dir: str | Path | None = "tokenizer",
    show_progress: bool = True,
) -> tuple[PreTrainedTokenizerFast, dict]:
    """Train on the train split of `spec`, save to `output_dir` (if given), and measure.

    Returns the tokenizer and a summary dict: vocab_size, train_chars, validation_chars,
    validation_tokens, validation_chars_per_token.
    """
    splits = load_text_splits(spec)
    train = splits["train"]
    tokenizer = build_bpe_tokenizer(
        _batches(train["text"], 256),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        length=(len(train) + 255) // 256,
    )
    if output_dir is not None:
        tokenizer.save_pretrained(str(output_dir))
    val_chars, val_tokens = chars_per_token(tokenizer, splits["validation"]["text"])
    summary = {
        "vocab_size": len(tokenizer),
        "train_documents": len(train),
        "train_chars": sum(len(t) for t in train["text"]),
        "validation_chars": val_chars,
        "validation_tokens": val_tokens,
        "validation_chars_per_token": val_chars / max(val_tokens, 1),
    }
    return tokenizer, summary


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
