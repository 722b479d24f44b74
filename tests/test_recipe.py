"""The short-run recipe (docs/recipe): zero-initialised output projections; the ablation's and race's bookkeeping."""

import json
import os
import sys

import pytest
import torch

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.cli.base import parse
from hf_attn.model.configuration_hf_attn import ATTENTION_TYPES
from hf_attn.tools.benchmarks.recipe import CHANGES, Recipe, chosen_changes, goal_lines, load_recipe, run_process
from hf_attn.tools.benchmarks.recipe_compare import compare_markdown, compare_recipes, goals
from hf_attn.train import CorpusSpec, ModelOptions, TrainOptions
from hf_attn.utils import HfAttnError, environment, peak_rss_bytes


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


# ---------------------------------------------------------------- the ablation's and the race's bookkeeping


def test_a_change_adds_flags_and_overrides_to_the_recipe():
    zero = chosen_changes(["zero-init"])[0]
    recipe = Recipe().with_change(chosen_changes(["optimizer muon"])[0]).with_change(zero)
    argv = recipe.argv()
    assert argv[argv.index("--optimizer") + 1] == "muon"
    overrides = argv[argv.index("--config-overrides") + 1]
    assert overrides.endswith(",zero_init_output_projections=true") and overrides.startswith("hidden_size=128,")
    assert Recipe().cost_key() != recipe.cost_key()  # another optimizer: another probe
    assert Recipe().with_change(chosen_changes(["wsd schedule"])[0]).cost_key() == Recipe().cost_key()
    assert [c.name for c in chosen_changes(None)] == [c.name for c in CHANGES]
    with pytest.raises(ValueError, match="--changes: \\['qk-norm'\\]"):
        chosen_changes(["qk-norm"])


def test_every_change_parses_as_hf_attn_train_flags():
    for change in CHANGES:
        model, _, options = parse([ModelOptions, CorpusSpec, TrainOptions], Recipe().with_change(change).argv())
        HfAttnConfig.from_preset("tiny", **model.overrides())
        for flag, value in change.flags.items():
            given = getattr(options, flag[2:].replace("-", "_"))
            assert given == (type(given)(value) if isinstance(given, (int, float)) else value), flag


def test_goals_are_marked_from_the_numbers():
    lines = goal_lines(60, {"val_bits_per_char": 2.44, "train_s": 59.0}, memory_ratio=1.6)
    assert lines == [
        "- <= 2.45 bits/char within 60 s of training: met (2.4400 in 59.0 s)",
        "- <= 2.2 bits/char within 600 s of training: not judged here (a run with --budget 600 judges it)",
        "- peak memory <= 1.5x nanoGPT's: missed (1.60x)",
    ]
    assert "missed" in goal_lines(60, {"val_bits_per_char": 2.44, "train_s": 61.0}, 1.0)[0]  # over the time
    ten_minutes = goal_lines(600, {"val_bits_per_char": 2.21, "train_s": 590.0}, 1.0)
    assert "not judged" in ten_minutes[0] and "missed (2.2100 in 590.0 s)" in ten_minutes[1]


def _compare_folder(path, optimizer: str, bits: dict, max_tokens: int = 4096):
    """A finished hf-attn-compare folder as the recipe comparison reads it: results and arguments."""
    config = HfAttnConfig.from_preset("tiny").to_dict()
    train = {"optimizer": optimizer, "lr": 2e-3, "lr_schedule": "cosine", "min_lr_ratio": 0.1, "warmup_steps": 2,
             "decay_fraction": 0.2, "weight_decay": 0.1, "beta2": 0.95, "muon_lr": 0.02, "muon_weight_decay": 0.0,
             "muon_momentum": 0.95, "muon_adjust_lr": "original", "batch_size": 2, "block_size": 16,
             "max_tokens": max_tokens, "max_grad_norm": 1.0}  # fmt: skip
    runs = [
        {"variant": v, "seed": 0, "status": "ok", "val_bits_per_char": b, "train_tokens_per_s": 1.0, "config": config}
        for v, b in bits.items()
    ]
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"runs": runs}))
    (path / "compare_args.json").write_text(json.dumps({"train": train}))
    return str(path)


def test_the_recipe_comparison_pairs_designs_and_times_both_optimizers(tmp_path):
    old = _compare_folder(tmp_path / "old", "adamw", {"mha": 2.0, "mla": 2.1})
    new = _compare_folder(tmp_path / "new", "muon", {"mha": 1.9, "mla": 2.15, "swa": 2.0})
    result = compare_recipes(old, new, repeats=2)
    assert [(r["variant"], round(r["change"], 6)) for r in result["rows"]] == [("mha", -0.1), ("mla", 0.05)]
    assert set(result["step_time"]["samples_ms"]) == {"old", "new"} and result["step_time"]["ratio"] > 0
    lines = goals(result)
    assert lines[0].startswith("- mha improves by at least 0.05 bits/char: met (+0.1000")
    markdown = compare_markdown(result, "cmd", environment())
    assert "`optimizer` adamw → muon" in markdown and "| mla | 0 | 2.1000 | 2.1500 | +0.0500 |" in markdown


def test_the_recipe_comparison_refuses_runs_of_different_budgets(tmp_path):
    old = _compare_folder(tmp_path / "old", "adamw", {"mha": 2.0})
    new = _compare_folder(tmp_path / "new", "muon", {"mha": 1.9}, max_tokens=8192)
    with pytest.raises(HfAttnError, match="max_tokens: 4096 in the old run, 8192 in the new one"):
        compare_recipes(old, new, repeats=1)
    with pytest.raises(HfAttnError, match="results.json: not found"):
        compare_recipes(str(tmp_path / "none"), new, repeats=1)


def test_a_child_s_peak_memory_is_its_own_not_its_parent_s():
    # This test process holds torch and transformers (hundreds of MB); a bare python child holds ~10 MB.
    # Linux's ru_maxrss would give such a child this process's peak (exec keeps it); run_process does not.
    parent = peak_rss_bytes()
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert parent >= resident > 200 * 2**20
    bare = run_process([sys.executable, "-c", "pass"])["peak_rss_bytes"]
    assert bare < 100 * 2**20


def test_the_race_can_size_the_recipe_s_model_for_a_longer_budget():
    recipe = load_recipe("old", "hidden_size=256,intermediate_size=688")
    assert recipe.overrides == {**Recipe().overrides, "hidden_size": 256, "intermediate_size": 688}
    assert recipe.flags == Recipe().flags
    with pytest.raises(ValueError, match="--overrides: 'nope' is not an HfAttnConfig field"):
        load_recipe("old", "nope=1")
    assert load_recipe("old", flags="--muon-weight-decay 0.1 --lr 1e-3").flags == {
        **Recipe().flags,
        "--muon-weight-decay": "0.1",
        "--lr": "1e-3",
    }
    with pytest.raises(ValueError, match="give pairs of a flag and its value"):
        load_recipe("old", flags="--muon-weight-decay")
