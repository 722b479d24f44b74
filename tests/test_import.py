"""Importing a pretrained Llama checkpoint (GGUF file, folder): transformers' Llama's logits, tokens, tokenizer."""

import json

import pytest
import torch
from conftest import tiny_llama
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, pipeline

from hf_attn import HfAttnForCausalLM
from hf_attn.cli.import_model import main as import_main
from hf_attn.tools.conversion.convert import from_llama
from hf_attn.tools.conversion.importing import import_model, load_pretrained
from hf_attn.tools.export.gguf import export_gguf
from hf_attn.utils import HfAttnError

pytest.importorskip("gguf", reason="the gguf package is not installed (scripts/ci_setup.sh installs it)")
pytestmark = pytest.mark.usefixtures("single_thread")
TOKENIZER_DIR = "tokenizer"
CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}<|assistant|>"
# float32 end to end: the GGUF file holds f32 tensors and RoPE rows are only reordered, never rounded.
ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.chat_template = CHAT
    return tok


@pytest.fixture(scope="module")
def llama(tokenizer):
    """A tiny random Llama shaped like SmolLM2: GQA (4 heads, 2 K/V heads), tied embeddings, RoPE theta 1e5."""
    return tiny_llama(
        seed=3, std=0.1, vocab_size=len(tokenizer), rope_theta=1e5, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


@pytest.fixture(scope="module")
def files(llama, tokenizer, tmp_path_factory):
    """The Llama as a safetensors folder and as a float32 GGUF file (llama.cpp's `llama` layout, chat template in)."""
    root = tmp_path_factory.mktemp("import")
    llama.save_pretrained(root / "folder")
    tokenizer.save_pretrained(root / "folder")
    gguf_path = export_gguf(from_llama(llama), root / "tiny.gguf", dtype="f32", tokenizer=tokenizer)
    return {"folder": str(root / "folder"), "gguf": str(gguf_path)}


IDS = torch.tensor([[5, 17, 300, 42, 7, 1000, 12, 99], [8, 3, 2, 4, 600, 13, 77, 5]])


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_imported_logits_equal_transformers_llama_from_the_same_file(files, llama, kind):
    imported, tokenizer = import_model(files[kind])
    reference, _ = load_pretrained(files[kind])  # transformers' own LlamaForCausalLM (GGUF: its dequantizing loader)
    assert isinstance(imported, HfAttnForCausalLM) and isinstance(reference, LlamaForCausalLM)
    assert imported.config.attention_type == "gqa" and imported.config.num_key_value_heads == 2
    with torch.no_grad():
        got, want = imported(IDS).logits, reference(IDS).logits
        assert_close(got, want, rtol=0, atol=ATOL)
        assert_close(got, llama(IDS).logits, rtol=0, atol=ATOL)  # the file holds the original weights
    prompt = IDS[:1, :4]
    greedy = dict(max_new_tokens=12, do_sample=False)
    assert imported.generate(prompt, **greedy).tolist() == reference.generate(prompt, **greedy).tolist()


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_tokenizer_and_chat_template_come_along(files, tokenizer, kind):
    _, imported = import_model(files[kind])
    text = "In the beginning God created the heaven and the earth. 1234"
    assert imported(text)["input_ids"] == tokenizer(text)["input_ids"]
    messages = [{"role": "user", "content": "Hello"}]
    assert imported.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )


def test_cli_writes_a_folder_every_tool_reads(files, tokenizer, tmp_path, capsys):
    out = tmp_path / "imported"
    import_main([files["gguf"], "--output-dir", str(out)])
    record = json.loads((out / "import.json").read_text())
    assert record["attention_type"] == "gqa" and record["chat_template"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, HfAttnForCausalLM)
    generator = pipeline("text-generation", model=str(out))
    reply = generator([{"role": "user", "content": "Hello"}], max_new_tokens=4, do_sample=False)
    assert reply[0]["generated_text"][-1]["role"] == "assistant"  # the chat template formatted the messages
    with pytest.raises(SystemExit):
        import_main([files["gguf"], "--output-dir", str(out)])
    assert "pass --overwrite" in capsys.readouterr().err


def test_non_llama_sources_are_refused(tmp_path):
    with pytest.raises(HfAttnError, match="no such GGUF file"):
        import_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 8}))
    with pytest.raises(HfAttnError, match="model_type 'gpt2'"):
        import_model(str(tmp_path))
