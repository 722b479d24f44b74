"""Corpus sources, splits, packing, stats and errors of hf_attn.train.data; all offline."""

import json
import math

import datasets
import pytest

from hf_attn.cli.base import parse
from hf_attn.train.data import (
    CorpusSpec,
    HubUnavailableError,
    bits_per_byte,
    bits_per_char,
    build_lm_data,
    default_corpus_documents,
    load_text_splits,
    pack_splits,
)
from hf_attn.train.tokenizer import build_bpe_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    """A 300-token byte-level BPE, trained in well under a second."""
    texts = ["the quick brown fox jumps over the lazy dog. " * 20, "héllo wörld 中文 🤖\n" * 10]
    return build_bpe_tokenizer(texts, vocab_size=300, show_progress=False)


def texts(ds):
    return list(ds["text"])  # datasets 5 returns a lazy Column


def chars(ds):
    return sum(len(t) for t in ds["text"])


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


# ---------------------------------------------------------------- (a) default corpus


def test_default_corpus_is_the_kjv_by_chapter():
    docs = default_corpus_documents()
    assert len(docs) == 1189  # chapters of the KJV
    assert sum(len(d) for d in docs) > 4_000_000
    assert docs[0].startswith("In the beginning God created")
    assert "Amen." in docs[-1]
    assert not any(ch.isdigit() for ch in docs[0])  # verse references removed


def test_default_corpus_split_and_cap():
    splits = load_text_splits(CorpusSpec(max_chars=200_000))
    assert set(splits) == {"train", "validation"}
    assert splits["train"].column_names == ["text"]
    assert chars(splits["train"]) + chars(splits["validation"]) == 200_000
    # "auto" on many documents splits by documents, ~10% of them.
    n = len(splits["train"]) + len(splits["validation"])
    assert len(splits["validation"]) == round(n * 0.1)


def test_document_split_is_seeded():
    a = load_text_splits(CorpusSpec(max_chars=300_000, data_seed=1))
    b = load_text_splits(CorpusSpec(max_chars=300_000, data_seed=1))
    c = load_text_splits(CorpusSpec(max_chars=300_000, data_seed=2))
    assert texts(a["validation"]) == texts(b["validation"])
    assert texts(a["train"]) == texts(b["train"])
    assert texts(a["validation"]) != texts(c["validation"])
    # A split is a partition of the documents.
    assert sorted(texts(a["train"]) + texts(a["validation"])) == sorted(texts(c["train"]) + texts(c["validation"]))


# ---------------------------------------------------------------- (c) local files


def test_single_text_file_uses_char_split(tmp_path):
    text = "".join(f"line {i} of a little play\n" for i in range(1000))
    f = write(tmp_path / "play.txt", text)
    splits = load_text_splits(CorpusSpec(text_files=[f]))
    n_train = int(len(text) * 0.9)  # nanoGPT's split
    assert texts(splits["train"]) == [text[:n_train]]
    assert texts(splits["validation"]) == [text[n_train:]]


def test_glob_one_document_per_file(tmp_path):
    files = {f"doc{i}.txt": f"document {i}\nsecond line {i}\n" * (i + 1) for i in range(10)}
    for name, t in files.items():
        write(tmp_path / name, t)
    write(tmp_path / "skip.md", "not matched")
    splits = load_text_splits(CorpusSpec(text_files=[str(tmp_path / "doc*.txt")], val_fraction=0.2))
    got = texts(splits["train"]) + texts(splits["validation"])
    assert sorted(got) == sorted(files.values())
    assert len(splits["validation"]) == 2


def test_jsonl_and_text_column(tmp_path):
    rows = [{"body": f"record {i} " * 10, "id": i} for i in range(20)]
    f = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    splits = load_text_splits(CorpusSpec(text_files=[f], text_column="body", split="documents"))
    assert splits["train"].column_names == ["text"]
    assert sorted(texts(splits["train"]) + texts(splits["validation"])) == sorted(r["body"] for r in rows)
    with pytest.raises(ValueError, match="no text column 'text'"):
        load_text_splits(CorpusSpec(text_files=[f]))


def test_chars_split_over_documents_keeps_every_char(tmp_path):
    for i in range(5):
        write(tmp_path / f"{i}.txt", f"file {i} " * 50)
    spec = CorpusSpec(text_files=[str(tmp_path / "*.txt")], split="chars", val_fraction=0.25)
    splits = load_text_splits(spec)
    total = "".join(f"file {i} " * 50 for i in range(5))
    assert "".join(texts(splits["train"])) == total[: int(len(total) * 0.75)]
    assert "".join(texts(splits["validation"])) == total[int(len(total) * 0.75) :]


# ---------------------------------------------------------------- (b) datasets


def test_save_to_disk_dataset_dict_with_own_validation(tmp_path):
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"content": [f"train {i}" for i in range(30)] + [""]}),
        validation=datasets.Dataset.from_dict({"content": [f"val {i}" for i in range(5)]}),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    splits = load_text_splits(CorpusSpec(dataset=str(tmp_path / "dd"), text_column="content"))
    assert texts(splits["train"]) == [f"train {i}" for i in range(30)]  # empty row dropped
    assert texts(splits["validation"]) == [f"val {i}" for i in range(5)]
    # An explicit split mode re-splits the train split and ignores its validation.
    resplit = load_text_splits(CorpusSpec(dataset=str(tmp_path / "dd"), text_column="content", split="documents"))
    assert len(resplit["validation"]) == 3 and all(t.startswith("train") for t in texts(resplit["validation"]))
    # max_chars caps train and the own validation split in proportion to val_fraction.
    capped = load_text_splits(CorpusSpec(dataset=str(tmp_path / "dd"), text_column="content", max_chars=60))
    assert (chars(capped["train"]), chars(capped["validation"])) == (54, 6)
    assert texts(capped["validation"]) == ["val 0", "v"]


def test_save_to_disk_single_dataset(tmp_path):
    datasets.Dataset.from_dict({"text": [f"row {i} " * 5 for i in range(40)]}).save_to_disk(str(tmp_path / "ds"))
    splits = load_text_splits(CorpusSpec(dataset=str(tmp_path / "ds"), data_seed=3))
    assert len(splits["train"]) == 36 and len(splits["validation"]) == 4


def test_hub_id_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="offline.*Omit --dataset to use the offline default corpus"):
        load_text_splits(CorpusSpec(dataset="no-such-org/no-such-dataset-hf-attn"))
    assert issubclass(HubUnavailableError, ValueError) and issubclass(HubUnavailableError, ConnectionError)


# ---------------------------------------------------------------- packing and stats


def test_pack_blocks_eos_and_stats(tokenizer):
    docs = [f"the fox {i} jumps. " * (i + 3) for i in range(12)] + ["héllo 中文 🤖 " * 4]
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": docs[:10]}),
        validation=datasets.Dataset.from_dict({"text": docs[10:]}),
    )
    block = 16
    packed = pack_splits(splits, tokenizer, block)
    eos = tokenizer.eos_token_id
    for name, part in (("train", docs[:10]), ("validation", docs[10:])):
        stream = []
        for d in part:
            stream += tokenizer.encode(d, add_special_tokens=False) + [eos]
        st = packed.stats[name]
        assert st == {
            "documents": len(part),
            "chars": sum(len(d) for d in part),
            "bytes": sum(len(d.encode()) for d in part),
            "tokens": len(stream),
        }
        blocks = getattr(packed, name)[:]["input_ids"]  # torch format: one (N, block) tensor
        assert blocks.shape == (len(stream) // block, block)
        assert blocks.flatten().tolist() == stream[: len(stream) // block * block]
    assert packed.stats["validation"]["bytes"] > packed.stats["validation"]["chars"]  # non-ASCII
    assert packed.block_size == block


def test_build_lm_data_default_corpus_chars_sum(tokenizer):
    data = build_lm_data(CorpusSpec(max_chars=50_000), tokenizer, block_size=64, num_proc=2)
    st = data.stats
    assert st["train"]["chars"] + st["validation"]["chars"] == 50_000
    assert len(data.train) == st["train"]["tokens"] // 64
    assert data.train[0]["input_ids"].shape == (64,)
    # EOS separates the documents: one per document in each split.
    eos = tokenizer.eos_token_id
    n_eos = sum(int((b == eos).sum()) for b in data.validation["input_ids"])
    assert n_eos in (st["validation"]["documents"] - 1, st["validation"]["documents"])


def test_bits_per_char_and_byte():
    assert bits_per_char(math.log(2), tokens=10, chars=10) == pytest.approx(1.0)
    assert bits_per_char(1.0, tokens=100, chars=400) == pytest.approx(0.25 / math.log(2))
    assert bits_per_byte(1.0, tokens=100, n_bytes=200) == pytest.approx(0.5 / math.log(2))


def test_cli_flags_round_trip():
    argv = "--text-files a.txt b*.txt --val-fraction 0.2 --split chars --data-seed 7 --max-chars 9".split()
    (spec,) = parse([CorpusSpec], argv)
    assert spec == CorpusSpec(
        text_files=["a.txt", "b*.txt"], val_fraction=0.2, split="chars", data_seed=7, max_chars=9
    )
    assert parse([CorpusSpec], []) == (CorpusSpec(),)
    with pytest.raises(SystemExit):  # argparse: "invalid choice"
        parse([CorpusSpec], ["--split", "lines"])


# ---------------------------------------------------------------- errors


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt.*file not found"):
        load_text_splits(CorpusSpec(text_files=[str(tmp_path / "nope.txt")]))
    with pytest.raises(FileNotFoundError, match="glob matches no file"):
        load_text_splits(CorpusSpec(text_files=[str(tmp_path / "*.txt")]))
    with pytest.raises(FileNotFoundError, match="not a folder written by save_to_disk"):
        load_text_splits(CorpusSpec(dataset=str(tmp_path / "missing")))


def test_non_utf8_file_names_line_and_offset(tmp_path):
    good = write(tmp_path / "good.txt", "fine\n")
    bad = write(tmp_path / "bad.txt", b"ok line\nsecond caf" + b"\xe9 latin-1\n")
    with pytest.raises(ValueError, match=r"bad\.txt: not valid UTF-8 at line 2, byte offset 18"):
        load_text_splits(CorpusSpec(text_files=[good, bad]))


def test_utf8_check_across_chunk_boundary(tmp_path):
    from hf_attn.train.data import check_utf8

    f = write(tmp_path / "a.txt", "ab\n€€€")  # € is 3 bytes; 4-byte chunks cut it
    check_utf8(f, chunk_bytes=4)
    f = write(tmp_path / "b.txt", "ab\n€".encode() + b"\n\xff")
    with pytest.raises(ValueError, match="line 3, byte offset 7"):
        check_utf8(f, chunk_bytes=4)
    f = write(tmp_path / "c.txt", "ab€".encode()[:-1])
    with pytest.raises(ValueError, match="line 1, byte offset 2"):
        check_utf8(f, chunk_bytes=4)


def test_empty_corpus(tmp_path):
    f = write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="empty"):
        load_text_splits(CorpusSpec(text_files=[f]))
    datasets.Dataset.from_dict({"text": ["", ""]}).save_to_disk(str(tmp_path / "e"))
    with pytest.raises(ValueError, match="empty"):
        load_text_splits(CorpusSpec(dataset=str(tmp_path / "e")))


def test_block_size_larger_than_split(tokenizer):
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": ["the fox " * 100]}),
        validation=datasets.Dataset.from_dict({"text": ["dog"]}),
    )
    with pytest.raises(ValueError, match="block_size=64 is larger than the validation split"):
        pack_splits(splits, tokenizer, 64)


def test_bad_spec_values():
    with pytest.raises(ValueError, match="val_fraction"):
        load_text_splits(CorpusSpec(val_fraction=1.0))
    with pytest.raises(ValueError, match="split='lines'"):
        load_text_splits(CorpusSpec(split="lines"))
