"""Serving conventions: streamed text equals generated text, tensor parallelism over two CPU processes gives
one process's logits, and a saved run's tokenizer loads with the model's context as its length."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer, TextStreamer

from hf_attn.cli.train import main as train_main

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("attention_type", ["gqa", "mla", "performer", "swa"])
def test_streamers_give_the_generated_text(make_model, byte_tokenizer, attention_type, capsys):
    model = make_model(attention_type)
    prompt = byte_tokenizer("And God said, Let there be light", return_tensors="pt")
    kwargs = dict(**prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=257)
    generated = model.generate(**kwargs)
    expected = byte_tokenizer.decode(generated[0, prompt.input_ids.shape[1] :])
    assert len(expected) > 0

    capsys.readouterr()
    model.generate(**kwargs, streamer=TextStreamer(byte_tokenizer, skip_prompt=True))
    assert capsys.readouterr().out == expected + "\n"  # TextStreamer ends the stream with a newline

    streamer = TextIteratorStreamer(byte_tokenizer, skip_prompt=True)
    thread = threading.Thread(target=model.generate, kwargs={**kwargs, "streamer": streamer})
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert len(pieces) > 1 and "".join(pieces) == expected


TP_WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    out, results = sys.argv[1], {}
    for model_dir in sys.argv[2:]:
        plan = DistributedConfig(tp_plan="auto")
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, distributed_config=plan)
        sharded = [name for name, p in model.named_parameters()
                   if name.startswith("model.layers.0.") and hasattr(p, "to_local") and p.to_local().shape != p.shape]
        ids = torch.arange(24).view(2, 12) * 7 % 256
        with torch.no_grad():
            results[model_dir] = {"logits": model(input_ids=ids).logits, "sharded": sharded, "tp_size": model.tp_size}
    if dist.get_rank() == 0:
        torch.save(results, out)
    """
)


@pytest.mark.timeout(300)
def test_tensor_parallel_on_two_cpu_processes_matches_one(tmp_path, make_model):
    """`from_pretrained(..., distributed_config=DistributedConfig(tp_plan="auto"))` under torchrun, gloo on CPU."""
    expected = {}
    for attention_type in ("gqa", "mla"):
        model = make_model(attention_type)
        model.save_pretrained(tmp_path / attention_type)
        with torch.no_grad():
            expected[attention_type] = model(input_ids=torch.arange(24).view(2, 12) * 7 % 256).logits
    (tmp_path / "worker.py").write_text(TP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "worker.py"), str(tmp_path / "tp.pt"), "gqa", "mla"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = torch.load(tmp_path / "tp.pt")
    for attention_type, logits in expected.items():
        result = results[attention_type]
        assert result["tp_size"] == 2
        split = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        if attention_type != "mla":  # MLA keeps its attention whole, as DeepseekV3's plan does
            split += ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
        assert sorted(result["sharded"]) == sorted(f"model.layers.0.{name}.weight" for name in split)
        torch.testing.assert_close(result["logits"], logits, rtol=1e-4, atol=1e-5)


def test_saved_run_tokenizer_loads_with_the_models_context(tmp_path):
    out = tmp_path / "run"
    train_main(["--output-dir", str(out), "--preset", "tiny", "--train-tokenizer-vocab", "300", "--max-chars", "20000",
                "--block-size", "32", "--batch-size", "4", "--max-steps", "2", "--eval-every", "2",
                "--save-every", "0", "--tracker", "none", "--progress", "false", "--sample-tokens", "2"])  # fmt: skip
    context = json.loads((out / "config.json").read_text())["max_position_embeddings"]
    assert AutoTokenizer.from_pretrained(out).model_max_length == context
    # Where hf_attn is imported (its classes registered), loading asks nothing; with stdin closed, a
    # question would be answered by EOF and printed.
    script = "import hf_attn, sys; from transformers import AutoTokenizer; " \
             "t = AutoTokenizer.from_pretrained(sys.argv[1]); print(t.model_max_length, type(t).__name__)"  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, str(out)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "custom code" not in proc.stdout + proc.stderr
    assert proc.stdout.split()[-2:] == [str(context), "TokenizersBackend"]
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert model.config.max_position_embeddings == context
