"""The layer-wise recovery step: it lowers every converted layer's attention-output error against the source."""

import json

import pytest
import torch
from conftest import tiny_llama
from transformers import AutoTokenizer

from hf_attn.cli.convert import main as convert_main
from hf_attn.tools.conversion.convert import attention_errors, convert_to_mla
from hf_attn.tools.conversion.recovery import RecoveryOptions, record_attention, recover_attention

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def source():
    return tiny_llama(seed=5)


def ids(seed: int, rows: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (rows, 32), generator=torch.Generator().manual_seed(seed))


def test_record_attention_holds_each_layers_inputs_and_outputs(source):
    calibration = ids(0, rows=3)
    records = record_attention(source, calibration)
    assert len(records) == 2 and records[0].inputs.shape == records[0].outputs.shape == (3, 32, 64)
    layer = source.model.layers[1]  # the recorded input is the normed residual; the output is attention's
    with torch.no_grad():
        hidden = source(calibration, output_hidden_states=True).hidden_states[1]
        assert torch.allclose(records[1].inputs, layer.input_layernorm(hidden), atol=1e-5)


def test_recovery_lowers_every_layers_error_and_the_logit_error_on_held_out_tokens(source):
    calibration, held_out = ids(1, rows=64), ids(2, rows=8)
    converted = convert_to_mla(source, 12, 8, calibration_data=calibration)  # 20 of 64 cached values: lossy
    with torch.no_grad():
        before_logits = (converted(held_out).logits - source(held_out).logits).norm().item()
    before = attention_errors(source, converted, held_out)
    options = RecoveryOptions(recovery_steps=100, recovery_lr=3e-3, recovery_batch_size=8)
    record = recover_attention(source, converted, calibration, options)
    after = attention_errors(source, converted, held_out)
    assert all(a < b for a, b in zip(record["attention_errors_after"], record["attention_errors_before"]))
    assert all(a < 0.95 * b for a, b in zip(after, before)), (before, after)  # it generalizes past the fit tokens
    with torch.no_grad():
        after_logits = (converted(held_out).logits - source(held_out).logits).norm().item()
    assert after_logits < before_logits
    assert converted.config.attention_type == "mla" and not converted.training


def test_recovery_needs_steps(source):
    converted = convert_to_mla(source, 12, 8)
    with pytest.raises(ValueError, match="recovery_steps"):
        recover_attention(source, converted, ids(0), RecoveryOptions(recovery_steps=0))


def test_convert_command_recovers_the_folder_it_wrote(tmp_path, capsys):
    tokenizer = AutoTokenizer.from_pretrained("tokenizer")
    llama = tiny_llama(seed=6, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    flags = ["--kv-lora-rank", "12", "--rope-dim", "8", "--calibration-tokens", "512", "--calibration-block-size",
             "32", "--max-chars", "20000", "--output-dir"]  # fmt: skip
    convert_main([str(tmp_path / "llama"), *flags, str(tmp_path / "zero-shot")])
    convert_main([str(tmp_path / "llama"), *flags, str(tmp_path / "recovered"), "--recovery-steps", "40",
                  "--recovery-tokens", "1024", "--recovery-lr", "3e-3"])  # fmt: skip
    zero_shot = json.loads((tmp_path / "zero-shot" / "conversion.json").read_text())
    recovered = json.loads((tmp_path / "recovered" / "conversion.json").read_text())
    assert recovered["recovery"]["recovery_tokens"] == 1024
    # the same calibration rows are checked in both records: the saved recovered folder is closer to the source
    assert sum(recovered["attention_errors"]) < sum(zero_shot["attention_errors"])
