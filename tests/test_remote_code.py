"""save_pretrained, then load with trust_remote_code=True in a fresh process where hf_attn is not importable."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.usefixtures("single_thread")

MODELING_FILES = {
    "configuration_hf_attn.py",
    "modeling_hf_attn.py",
    "attention.py",
    "attention_mla.py",
    "attention_performer.py",
    "attention_utils.py",
}

# Runs in the child process. `sys.modules["hf_attn"] = None` makes every `import hf_attn` raise
# ImportError, even though the package is installed (editable) in this environment.
LOADER = r"""
import inspect, json, sys
sys.modules["hf_attn"] = None
try:
    import hf_attn
    blocked = False
except ImportError:
    blocked = True

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

folder, inputs, outputs, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
data = load_file(inputs)
with torch.no_grad():
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
generated = model.generate(
    data["input_ids"], attention_mask=data["attention_mask"], max_new_tokens=6, do_sample=False, pad_token_id=0
)
save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, outputs)
print(json.dumps({
    "blocked": blocked,
    "class_module": type(model).__module__,
    "class_file": inspect.getfile(type(model)),
    "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
    "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
    "hf_attn_modules": sorted(k for k, v in sys.modules.items() if v is not None and k.split(".")[0] == "hf_attn"),
}))
"""


@pytest.mark.parametrize(
    "attention_type, overrides",
    [
        ("gqa", dict(tie_word_embeddings=True)),
        ("mla", dict(q_lora_rank=24)),
        ("performer", dict(num_key_value_heads=2, performer_chunk_size=4)),
        ("mqa", dict(sliding_window=4)),
    ],
    ids=["gqa-tied", "mla-q_lora", "performer", "mqa-sliding"],
)
def test_load_with_remote_code_without_hf_attn(make_model, tmp_path, attention_type, overrides):
    model = make_model(attention_type, **overrides)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)

    # The folder is self-contained: safetensors weights, config with auto_map, and the modeling code.
    files = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith(".bin")]
    assert MODELING_FILES <= files
    for name in MODELING_FILES:
        source = (folder / name).read_text()
        assert "import hf_attn" not in source and "from hf_attn" not in source, name
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_hf_attn.HfAttnConfig"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hf_attn.HfAttnForCausalLM"
    assert config["attention_type"] == attention_type

    ids = torch.randint(1, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    save_file({"input_ids": ids, "attention_mask": mask}, tmp_path / "inputs.safetensors")
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)

    script = tmp_path / "load.py"
    script.write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HOME", "HF_MODULES_CACHE")}
    modules_cache = tmp_path / "modules"
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(modules_cache),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            str(folder),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "outputs.safetensors"),
            str(torch.get_num_threads()),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])

    assert report["blocked"], "hf_attn was importable in the child: the test would prove nothing"
    assert report["hf_attn_modules"] == []
    assert report["class_module"].startswith("transformers_modules.")
    assert report["class_file"].startswith(str(modules_cache))
    assert report["dtypes"] == ["torch.float32"]
    assert report["tied"] == overrides.get("tie_word_embeddings", False)

    child = load_file(tmp_path / "outputs.safetensors")
    assert torch.equal(child["logits"], logits)
    assert torch.equal(child["generated"], generated)
