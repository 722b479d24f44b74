"""Norm carriers: latent dims that kv_b_proj ignores and that hold the latent RMSNorm's denominator steady."""

import pytest
import torch
from conftest import tiny_llama

from hf_attn.tools.conversion.convert import convert_to_mla

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def source():
    """A tiny random Llama with two "massive" residual dims, as pretrained models have, which K and V ignore."""
    model = tiny_llama(seed=7)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, :2] = 1.0 + 0.8 * torch.rand(
            256, 2, generator=torch.Generator().manual_seed(1)
        )
        for layer in model.model.layers:  # the massive dims carry input norm but no key or value
            layer.self_attn.k_proj.weight[:, :2] = 0
            layer.self_attn.v_proj.weight[:, :2] = 0
    return model


def latent_spread(model, ids) -> list[float]:
    """Per layer, the relative spread (std / mean) of the latent's RMS over tokens: what kv_a_layernorm divides by."""
    latents = []
    hooks = [
        layer.self_attn.kv_a_proj_with_mqa.register_forward_hook(
            lambda module, args, out: latents.append(out[..., : model.config.kv_lora_rank])
        )
        for layer in model.model.layers
    ]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    rms = [x.pow(2).mean(dim=-1).sqrt().flatten() for x in latents]
    return [(r.std() / r.mean()).item() for r in rms]


def test_carriers_steady_the_latent_norm_and_carry_no_key_or_value(source):
    ids = torch.randint(0, 256, (32, 32), generator=torch.Generator().manual_seed(0))
    plain = convert_to_mla(source, 16, 8, calibration_data=ids, latent_norm_carriers=0)
    carried = convert_to_mla(source, 16, 8, calibration_data=ids)  # the default: 2 carriers at rank 16
    spread_carried, spread_plain = latent_spread(carried, ids), latent_spread(plain, ids)
    assert spread_carried[0] < 0.3 * spread_plain[0] and spread_carried[1] < spread_plain[1]
    for layer in carried.model.layers:  # the last two latent dims are read by no head's key or value
        assert torch.count_nonzero(layer.self_attn.kv_b_proj.weight[:, -2:]) == 0
        assert torch.count_nonzero(layer.self_attn.kv_b_proj.weight[:, :-2].abs().sum(dim=0)) == 14


def test_carriers_are_off_without_calibration_and_refused_where_they_cannot_work(source):
    plain = convert_to_mla(source, 16, 8)
    assert torch.count_nonzero(plain.model.layers[0].self_attn.kv_b_proj.weight.abs().sum(dim=0)) == 16
    with pytest.raises(ValueError, match="latent_norm_carriers needs calibration"):
        convert_to_mla(source, 16, 8, latent_norm_carriers=2)
    with pytest.raises(ValueError, match="latent_norm_carriers must be in"):
        convert_to_mla(source, 16, 8, calibration_data=torch.zeros(1, 8, dtype=torch.long), latent_norm_carriers=16)
