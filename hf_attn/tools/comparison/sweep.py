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
because at the tiny preset's T = 32 they would be one token. The ranges are keyed on the design's class;
any other registered design is a family of one point, its default setting.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ...model.attention import KeyValueHeadsDesign, key_value_heads_type
from ...model.attention_mla import MLADesign
from ...model.attention_performer import PerformerDesign
from ...model.configuration_hf_attn import ATTENTION_DESIGNS, HfAttnConfig


def family_of(name: str, overrides: dict) -> str:
    """The family (and legend label) of a --variants name whose config overrides are `overrides`.

    The ranges above are keyed on the design's class, so a design subclassing one shares its range; any
    other registered design is its own family of one point, its default setting (never skipped).
    """
    design = ATTENTION_DESIGNS[overrides["attention_type"]]
    if isinstance(design, KeyValueHeadsDesign):
        if overrides.get("sliding_window") is not None:
            return f"{name}: sliding window"
        return " / ".join(n for n, d in ATTENTION_DESIGNS.items() if type(d) is type(design)) + ": K/V heads"
    if isinstance(design, MLADesign):
        return f"{design.name}: kv_lora_rank"
    if isinstance(design, PerformerDesign):
        return f"{design.name}: random features"
    return name


class _Families(Mapping):
    """--variants name -> the family whose range the sweep trains, for every variant as designs register."""

    def _table(self) -> dict[str, str]:
        from .compare import VARIANTS  # compare imports this module

        return {name: family_of(name, overrides) for name, overrides in VARIANTS.items()}

    def __getitem__(self, name: str) -> str:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


FAMILIES: Mapping[str, str] = _Families()


def sweep_variants(preset: str, block_size: int, designs: list[str] | tuple[str, ...]) -> list[str]:
    """The variant specs of the sweep over the families of `designs` (VARIANTS names), sized from the
    preset's heads and head dim and the training block; in family order, each by increasing cache."""
    families = FAMILIES
    chosen: dict[str, str] = {}  # family -> the first variant name that asked for it
    for name in designs:
        if ":" in name:
            raise ValueError(f"--sweep: give design names without overrides (the sweep sets them), got {name!r}")
        if name not in families:
            raise ValueError(f"--sweep: unknown design {name!r}; choose from {sorted(families)}")
        chosen.setdefault(families[name], name)
    config = HfAttnConfig.from_preset(preset)
    specs = []
    for name in chosen.values():
        specs += _family_range(name, config, block_size)
    return list(dict.fromkeys(specs))


def _family_range(name: str, config: HfAttnConfig, block_size: int) -> list[str]:
    """The specs of the family of variant `name` (see the module docstring for the ranges)."""
    from .compare import VARIANTS

    heads, d_h = config.num_attention_heads, config.head_dim
    overrides = VARIANTS[name]
    design = ATTENTION_DESIGNS[overrides["attention_type"]]
    if isinstance(design, KeyValueHeadsDesign) and overrides.get("sliding_window") is not None:
        return [f"{name}:sliding_window={block_size // q}" for q in (16, 8, 4, 2) if block_size // q >= 1]
    if isinstance(design, KeyValueHeadsDesign):
        divisors = [kv for kv in range(1, heads + 1) if heads % kv == 0]
        if type(design) is not KeyValueHeadsDesign:  # a subclass: its own name, every K/V head count
            return [f"{name}:num_key_value_heads={kv}" for kv in divisors]
        names = [key_value_heads_type(kv, heads) for kv in divisors]
        return [f"gqa:num_key_value_heads={kv}" if n == "gqa" else n for kv, n in zip(divisors, names)]
    if isinstance(design, MLADesign):
        return [f"{design.name}:kv_lora_rank={r}" for r in _doublings(max(1, d_h // 2), 8 * d_h)]
    if isinstance(design, PerformerDesign):
        return [f"{design.name}:performer_features={m}" for m in _doublings(max(1, d_h // 2), 4 * d_h)]
    return [name]


def _doublings(low: int, high: int) -> list[int]:
    values = [low]
    while values[-1] * 2 <= high:
        values.append(values[-1] * 2)
    return values
