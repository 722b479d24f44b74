"""The cache-size sweep: a range of settings per attention design, all on the comparison's budget.

    design family        what varies                      range (d_h: head dim, H: heads, T: block)
    mha / gqa / mqa      num_key_value_heads              every divisor of H, 1 (MQA) to H (MHA)
    mla                  kv_lora_rank (RoPE dim d_h/2)    d_h/2, d_h, 2 d_h, 4 d_h, 8 d_h
    swa                  sliding_window (MHA otherwise)   T/16, T/8, T/4, T/2
    performer            performer_features m             d_h/2, d_h, 2 d_h, 4 d_h

The MLA range doubles from d_h/2 to 8 d_h, DeepSeek-V2's 4 d_h in the middle; its decoupled RoPE key
keeps the config's default d_h/2, and the cache counts it (kv_lora_rank + qk_rope_head_dim per
layer). The Performer range brackets the paper's m = d log d (about 4 d_h at d_h = 32, arXiv
2009.14794 §4) from below: its decode state is H (m d_h + m) per layer whatever the context, so
m = 4 d_h already holds about half of MHA's cache at T = 128 tokens. Windows below T/16 are left out
because at the tiny preset's T = 32 they would be one token.
"""

from __future__ import annotations

from ...model.configuration_hf_attn import HfAttnConfig

# --variants name -> the family whose range the sweep trains
FAMILIES = {"mha": "kv_heads", "gqa": "kv_heads", "mqa": "kv_heads", "mla": "mla", "mla-q": "mla"}
FAMILIES.update({"swa": "window", "performer": "features"})


def sweep_variants(preset: str, block_size: int, designs: list[str] | tuple[str, ...]) -> list[str]:
    """The variant specs of the sweep over the families of `designs` (VARIANTS names), sized from the
    preset's heads and head dim and the training block; in family order, each by increasing cache."""
    families = []
    for name in designs:
        if ":" in name:
            raise ValueError(f"--sweep: give design names without overrides (the sweep sets them), got {name!r}")
        if name not in FAMILIES:
            raise ValueError(f"--sweep: unknown design {name!r}; choose from {sorted(FAMILIES)}")
        if FAMILIES[name] not in families:
            families.append(FAMILIES[name])
    config = HfAttnConfig.from_preset(preset)
    heads, d_h = config.num_attention_heads, config.head_dim
    specs = []
    for family in families:
        if family == "kv_heads":
            for kv in (k for k in range(1, heads + 1) if heads % k == 0):
                specs.append("mqa" if kv == 1 else "mha" if kv == heads else f"gqa:num_key_value_heads={kv}")
        elif family == "mla":
            specs += [f"mla:kv_lora_rank={r}" for r in _doublings(max(1, d_h // 2), 8 * d_h)]
        elif family == "window":
            specs += [f"swa:sliding_window={block_size // q}" for q in (16, 8, 4, 2) if block_size // q >= 1]
        else:
            specs += [f"performer:performer_features={m}" for m in _doublings(max(1, d_h // 2), 4 * d_h)]
    return list(dict.fromkeys(specs))


def _doublings(low: int, high: int) -> list[int]:
    values = [low]
    while values[-1] * 2 <= high:
        values.append(values[-1] * 2)
    return values
