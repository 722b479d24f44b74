"""The package's layout is its architecture: what ships in checkpoints, and which way imports point."""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hf_attn
from hf_attn import HfAttnConfig, HfAttnForCausalLM

PACKAGE = Path(hf_attn.__file__).parent
MODEL_DIR = PACKAGE / "model"
FIXTURES = Path(__file__).parent / "fixtures"
# Layers, lowest first: a module may import its own layer and the ones below it.
RANK = {"model": 0, "utils": 1, "train": 2, "tools": 3, "integrations": 3, "cli": 4}


def imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_model_files_import_only_torch_transformers_stdlib_and_siblings(path):
    siblings = {p.stem for p in MODEL_DIR.glob("*.py")}
    for level, module in imports(path):
        top = module.split(".")[0]
        if level == 0:
            assert top in {"torch", "transformers"} or top in sys.stdlib_module_names, f"{path.name}: import {module}"
        else:  # transformers copies siblings flat into the checkpoint: only `from .sibling import x` survives
            assert level == 1 and top in siblings, f"{path.name}: from {'.' * level}{module} import ..."


def test_every_module_belongs_to_a_layer():
    assert {layer_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"} == set(RANK)


def test_imports_point_down():
    for path in PACKAGE.rglob("*.py"):
        here = RANK.get(layer_of(path), len(RANK))
        for level, module in imports(path):
            if level == 0 and not module.startswith("hf_attn."):
                continue
            if level == 0:
                target = module.split(".")[1]
            elif level == 1 or path.parent == PACKAGE:  # a sibling, or a subpackage of the top
                target = layer_of(path) if path.parent != PACKAGE else module.split(".")[0]
            else:
                target = module.split(".")[0]
            if target in RANK:
                assert RANK[target] <= here, f"{path.relative_to(PACKAGE)} imports {target} (a higher layer)"


def test_save_pretrained_copies_exactly_the_model_folder(tmp_path):
    model = HfAttnForCausalLM(HfAttnConfig.from_preset("tiny", attention_type="mla"))
    model.save_pretrained(tmp_path)
    shipped = {p.name for p in tmp_path.glob("*.py")}
    assert shipped == {p.name for p in MODEL_DIR.glob("*.py")} - {"__init__.py"}
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    # The names every checkpoint ever saved carries: an interface, never renamed.
    assert auto_map == {
        "AutoConfig": "configuration_hf_attn.HfAttnConfig",
        "AutoModelForCausalLM": "modeling_hf_attn.HfAttnForCausalLM",
    }


# Folders saved by hf_attn at commit df804d6, before the move into hf_attn/model/ (their modeling
# code has attention_gqa.py), with the logits they gave then; see tests/fixtures/checkpoint_df804d6/.
OLD = FIXTURES / "checkpoint_df804d6"
OLD_TYPES = ["gqa", "mla"]


@pytest.fixture(params=OLD_TYPES)
def old_checkpoint(request, tmp_path) -> Path:
    """The saved folder as it was: weights, config and the modeling files it carried."""
    folder = tmp_path / f"old-{request.param}"
    shutil.copytree(OLD / request.param, folder)
    for code in (OLD / "code").glob("*.py.txt"):
        shutil.copy(code, folder / code.name.removesuffix(".txt"))
    return folder


LOAD_ALONE = """
import sys
sys.modules["hf_attn"] = None  # every `import hf_attn` fails: the code must come from the folder
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
expected = load_file(folder + "/expected_logits.safetensors")
torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"], rtol=0, atol=1e-5)
print("ok", type(model).__module__)
"""


def test_checkpoint_saved_before_the_move_loads_with_remote_code(old_checkpoint, tmp_path):
    assert (old_checkpoint / "attention_gqa.py").is_file()  # the old layout's file name
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_ALONE, str(old_checkpoint)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok transformers_modules.")


def test_checkpoint_saved_before_the_move_loads_into_todays_classes(old_checkpoint):
    model = HfAttnForCausalLM.from_pretrained(old_checkpoint).eval()
    assert model.config.attention_type == old_checkpoint.name.removeprefix("old-")
    expected = load_file(old_checkpoint / "expected_logits.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"], rtol=0, atol=1e-5)
