"""The byte-level BPE: exact round trip, no unknown token, special tokens, padding."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hf_attn.train.data import CorpusSpec
from hf_attn.train.tokenizer import EOS_TOKEN, PAD_TOKEN, train_tokenizer

REPO_TOKENIZER = Path(__file__).resolve().parents[1] / "tokenizer"

TRICKY = [
    "",
    " ",
    "  leading and trailing spaces  ",
    "Hello, world! Isn't it ?",
    "emoji 🤖👩‍👩‍👧 flags 🇺🇦",
    "CJK 中文字符 日本語 한국어",
    "combining e\u0301 a\u0308\u0323 vs precomposed é ä (NFC and NFD stay distinct)",
    "control \x00\x01\x07\x1b[0m\x7f tab\tcr\r\nlf\n\n",
    "zero width \u200b\u200d\ufeff rtl \u202e abc",
    "surrogate-free astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",
    "x" * 20_000,
    "word " * 5_000,
    "ＦＵＬＬＷＩＤＴＨ ﬁ ligature Ⅻ",  # NFKC would rewrite these
    f"literal special tokens {EOS_TOKEN}{PAD_TOKEN} inside text",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small tokenizer trained by the same code, saved and reloaded with AutoTokenizer."""
    out = tmp_path_factory.mktemp("tok")
    _, summary = train_tokenizer(CorpusSpec(max_chars=300_000), vocab_size=512, output_dir=out, show_progress=False)
    return AutoTokenizer.from_pretrained(out), summary


@pytest.fixture(scope="module")
def repo_tokenizer():
    return AutoTokenizer.from_pretrained(REPO_TOKENIZER)


def test_summary_and_special_ids(trained):
    tok, summary = trained
    assert summary["vocab_size"] == len(tok) == 512
    assert summary["train_chars"] + summary["validation_chars"] == 300_000
    assert summary["validation_chars_per_token"] > 2.0  # merges learnt; bytes alone give 1.0
    assert tok.bos_token == tok.eos_token == EOS_TOKEN
    assert tok.pad_token == PAD_TOKEN
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (0, 0, 1)
    assert tok.unk_token is None


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_round_trip_exact(trained, text):
    tok, _ = trained
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_round_trip_random_unicode(trained):
    import random

    tok, _ = trained
    rng = random.Random(0)
    # Every code point except surrogates, which no UTF-8 string can hold.
    pool = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for _ in range(200):
        text = "".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 60)))
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_no_unknown_token_and_every_byte_is_a_token(trained):
    tok, _ = trained
    text = bytes(range(128)).decode("ascii") + "".join(chr(c) for c in range(128, 2048, 7))
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    # Every non-special token decodes to something: no token stands for "unknown".
    assert len(tok.get_vocab()) == 512


def test_special_tokens_not_split(trained):
    tok, _ = trained
    ids = tok.encode(f"a{EOS_TOKEN}b{PAD_TOKEN}", add_special_tokens=False)
    assert ids.count(tok.eos_token_id) == 1 and ids.count(tok.pad_token_id) == 1
    assert tok.encode(EOS_TOKEN, add_special_tokens=False) == [tok.eos_token_id]
    # Encoding adds no special tokens by itself: packing adds EOS between documents.
    assert tok.encode("plain", add_special_tokens=True) == tok.encode("plain", add_special_tokens=False)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_padding(trained, side):
    tok, _ = trained
    tok.padding_side = side
    texts = ["short", "a much longer sentence than the first one"]
    batch = tok(texts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    single = [tok.encode(t, add_special_tokens=False) for t in texts]
    n = len(single[0])
    assert ids.shape == (2, len(single[1])) and n < ids.shape[1]
    pad = ids.shape[1] - n
    if side == "right":
        assert ids[0, :n].tolist() == single[0]
        assert ids[0, n:].tolist() == [tok.pad_token_id] * pad
        assert mask[0].tolist() == [1] * n + [0] * pad
    else:
        assert ids[0, pad:].tolist() == single[0]
        assert ids[0, :pad].tolist() == [tok.pad_token_id] * pad
        assert mask[0].tolist() == [0] * pad + [1] * n
    assert ids[1].tolist() == single[1] and mask[1].all()
    assert tok.decode(ids[0], skip_special_tokens=True) == texts[0]


def test_repo_tokenizer_loads_and_round_trips(repo_tokenizer):
    tok = repo_tokenizer
    assert len(tok) == 8192
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == (EOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    for text in TRICKY:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # Learnt on the default corpus: common words are single tokens.
    assert len(tok.encode(" LORD", add_special_tokens=False)) == 1
