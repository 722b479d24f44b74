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
SCRIPTS = Path(__file__).parents[1] / "scripts"
# What a newcomer can hold in their head (docs' STYLE: "under about 60 lines"), from `def` to the last line.
LONGEST_FUNCTION = 60
# Layers, lowest first: a module may import its own layer and the ones below it. A package with
# parts of its own has its own ranks, for imports between those parts.
RANKS = {
    "hf_attn": {"model": 0, "utils": 1, "loading": 1, "train": 2, "tools": 3, "integrations": 3, "cli": 4},
    "hf_attn.tools": {"export": 0, "comparison": 0, "hub": 0, "conversion": 1, "benchmarks": 1, "demo": 1},
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def module_name(path: Path) -> list[str]:
    """The dotted name of a file's module, as parts: hf_attn/tools/hub.py -> [hf_attn, tools, hub]."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def absolute(path: Path, level: int, module: str) -> list[str]:
    """The module an import statement in `path` names, resolved the way Python resolves relative imports."""
    if level == 0:
        return module.split(".")
    package = module_name(path) if path.name == "__init__.py" else module_name(path)[:-1]
    base = package[: len(package) - (level - 1)]
    return base + (module.split(".") if module else [])


def parts_of(package: str) -> set[str]:
    """The modules and subpackages directly inside `package` (a folder under hf_attn)."""
    folder = PACKAGE.parent.joinpath(*package.split("."))
    return {p.stem for p in folder.glob("*.py")} - {"__init__"} | {
        p.name for p in folder.iterdir() if (p / "__init__.py").is_file()
    }


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_model_files_import_only_torch_transformers_stdlib_and_siblings(path):
    siblings = {p.stem for p in MODEL_DIR.glob("*.py")}
    for level, module in imports(path):
        top = module.split(".")[0]
        if level == 0:
            assert top in {"torch", "transformers"} or top in sys.stdlib_module_names, f"{path.name}: import {module}"
        else:  # transformers copies siblings flat into the checkpoint: only `from .sibling import x` survives
            assert level == 1 and top in siblings, f"{path.name}: from {'.' * level}{module} import ..."


@pytest.mark.parametrize("package", sorted(RANKS))
def test_every_module_belongs_to_a_layer(package):
    assert parts_of(package) == set(RANKS[package])


def test_every_package_has_a_docstring():
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(PACKAGE)}: no docstring"


def test_imports_point_down():
    for path in PACKAGE.rglob("*.py"):
        here = module_name(path)
        for level, module in imports(path):
            target = absolute(path, level, module)
            if target[0] != "hf_attn":
                continue
            # the first place the two names part: within which package, and in which of its parts each is
            common = next((i for i, (a, b) in enumerate(zip(here, target)) if a != b), None)
            if common is None:
                continue  # an import from a package the module sits in
            ranks = RANKS.get(".".join(here[:common]), {})
            mine, theirs = here[common], target[common]
            if mine in ranks and theirs in ranks:
                assert ranks[theirs] <= ranks[mine], f"{'.'.join(here)} imports {'.'.join(target)} (a higher layer)"


def test_no_function_is_longer_than_sixty_lines():
    too_long = []
    for path in sorted([*PACKAGE.rglob("*.py"), *SCRIPTS.glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    name = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
                    too_long.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "split these functions:\n" + "\n".join(too_long)


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
