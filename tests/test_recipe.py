"""The architecture options of the short-run recipe (docs/recipe): zero-initialised output projections."""

import pytest
import torch

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.model.configuration_hf_attn import ATTENTION_TYPES


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_zero_init_output_projections_zeroes_each_branch_end_only(attention_type):
    torch.manual_seed(0)
    plain = HfAttnForCausalLM(HfAttnConfig.from_preset("tiny", attention_type=attention_type))
    torch.manual_seed(0)
    zeroed = HfAttnForCausalLM(
        HfAttnConfig.from_preset("tiny", attention_type=attention_type, zero_init_output_projections=True)
    )
    for (name, a), b in zip(plain.named_parameters(), zeroed.parameters(), strict=True):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert a.abs().sum() > 0 and b.abs().sum() == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # nothing else moves
    # every layer starts as the identity: the hidden state after the trunk is the normed embedding
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    out = zeroed.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out, zeroed.model.norm(zeroed.model.embed_tokens(ids)))


def test_zero_init_leaves_a_loaded_checkpoint_alone(tmp_path):
    config = HfAttnConfig.from_preset("tiny", zero_init_output_projections=True)
    model = HfAttnForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.normal_()
    model.save_pretrained(tmp_path)
    loaded = HfAttnForCausalLM.from_pretrained(tmp_path)
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.config.zero_init_output_projections is True
