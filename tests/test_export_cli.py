"""`hf-attn-export`: GGUF files and plain transformers folders from a saved model, and clear refusals."""

import os
import subprocess

import pytest
import torch
from conftest import entry_point, randomize_
from transformers import AutoModelForCausalLM, AutoTokenizer, DeepseekV3ForCausalLM, LlamaForCausalLM

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.cli.export import main

pytestmark = pytest.mark.usefixtures("single_thread")
TOKENIZER_DIR = os.path.join(os.path.dirname(__file__), "..", "tokenizer")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{design: folder} holding a tiny saved model (mha, mla, performer, swa) and the project's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    folders = {}
    for attention_type in ("mha", "mla", "performer", "swa"):
        design = (
            dict(attention_type="gqa", sliding_window=8)
            if attention_type == "swa"
            else dict(attention_type=attention_type)
        )
        config = HfAttnConfig.from_preset("tiny", **design, vocab_size=len(tokenizer))
        folder = tmp_path_factory.mktemp(attention_type)
        randomize_(HfAttnForCausalLM(config)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[attention_type] = str(folder)
    return folders


def expect_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    for fragment in fragments:
        assert fragment in err[-1], err[-1]


@pytest.mark.parametrize("attention_type, format, target_cls", [
    ("mha", "llama", LlamaForCausalLM), ("mla", "deepseek_v3", DeepseekV3ForCausalLM),
])  # fmt: skip
def test_folder_formats_load_in_transformers_with_the_same_logits(saved, tmp_path, attention_type, format, target_cls):
    out = tmp_path / format
    main([saved[attention_type], "--format", format, "--out", str(out)])
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert type(exported) is target_cls
    ids = AutoTokenizer.from_pretrained(out)("In the beginning God created", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = HfAttnForCausalLM.from_pretrained(saved[attention_type])(ids).logits
        torch.testing.assert_close(exported(ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_gguf_format_writes_the_architecture_for_the_attention_type(saved, tmp_path):
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (scripts/ci_setup.sh installs it)")
    for attention_type, arch in (("mha", "llama"), ("mla", "deepseek2")):
        out = tmp_path / f"{attention_type}.gguf"
        main([saved[attention_type], "--out", str(out), "--dtype", "q8_0"])
        reader = gguf.GGUFReader(out)
        assert reader.fields["general.architecture"].contents() == arch
        assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_refusals_name_the_problem(saved, tmp_path, capsys):
    expect_error(
        capsys,
        [saved["mla"], "--format", "llama", "--out", str(tmp_path / "a")],
        "--format llama",
        "'mla'",
        "--format deepseek_v3 or gguf",
    )
    expect_error(
        capsys,
        [saved["mha"], "--format", "deepseek_v3", "--out", str(tmp_path / "b")],
        "--format deepseek_v3",
        "'mha'",
        "--format llama or gguf",
    )
    expect_error(capsys, [saved["performer"], "--out", str(tmp_path / "p.gguf")], "llama.cpp has no FAVOR+")
    for format in ("llama", "deepseek_v3"):
        out = str(tmp_path / "p")
        expect_error(capsys, [saved["performer"], "--format", format, "--out", out], "'performer' has no transformers")
    expect_error(capsys, [saved["swa"], "--out", str(tmp_path / "s.gguf")], "sliding_window=8")
    expect_error(capsys, [saved["swa"], "--format", "llama", "--out", str(tmp_path / "s")], "sliding_window=8")
    expect_error(capsys, [saved["mha"]], "--out is required")
    expect_error(capsys, ["--out", str(tmp_path / "c.gguf")], "MODEL_DIR")
    expect_error(capsys, [str(tmp_path / "missing"), "--out", str(tmp_path / "d.gguf")], "no such model folder")
    assert sorted(os.listdir(tmp_path)) == []
    (tmp_path / "taken.gguf").write_text("keep me")
    expect_error(capsys, [saved["mha"], "--out", str(tmp_path / "taken.gguf")], "--overwrite")
    assert (tmp_path / "taken.gguf").read_text() == "keep me"


def test_entry_point_is_installed():
    result = subprocess.run([*entry_point("hf-attn-export"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--format {gguf,llama,deepseek_v3,mistral}" in result.stdout


def test_sliding_window_model_exports_as_mistral(saved, tmp_path):
    from transformers import MistralForCausalLM

    from hf_attn.tools.export.to_transformers import export_folder

    out = export_folder(saved["swa"], str(tmp_path / "mistral"), "mistral")
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert type(exported) is MistralForCausalLM and exported.config.sliding_window == 8
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))  # longer than the window
    with torch.no_grad():
        expected = HfAttnForCausalLM.from_pretrained(saved["swa"])(ids).logits
        torch.testing.assert_close(exported(ids).logits, expected, rtol=1e-4, atol=1e-5)
