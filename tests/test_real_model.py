"""The real-model experiment's measuring parts on tiny models: decode timing's cache bytes, the fine-tune's
arguments, and the report's verdicts."""

import pytest
import torch

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.tools.conversion.real_model_finetune import FinetuneStageOptions, finetune_args
from hf_attn.tools.conversion.real_model_speed import decode_goals, decode_lines, hf_attn_decode

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128, vocab_size=50_000)


DESIGNS = [("gqa", {"num_key_value_heads": 2}), ("mla", {"kv_lora_rank": 16, "qk_rope_head_dim": 8})]


@pytest.mark.parametrize("attention_type, extra", DESIGNS)
def test_hf_attn_decode_measures_the_cache_it_decodes_from(attention_type, extra):
    torch.manual_seed(0)
    model = HfAttnForCausalLM(HfAttnConfig(attention_type=attention_type, **TINY, **extra)).eval()
    context, steps = 48, 3
    rows = hf_attn_decode(model, context, batch=3, steps=steps)
    assert [r["batch"] for r in rows] == [1, 3]
    cached = context - 1  # the prompt leaves room for one warm-up step and the timed steps, all cached
    for row in rows:
        assert row["kv_bytes"] == model.config.kv_cache_elements_per_token * 4 * cached * row["batch"]
        assert row["tokens_per_second"] > 0


def test_finetune_evaluates_the_experiments_validation_blocks():
    stage = FinetuneStageOptions(finetune_tokens=65_536, finetune_batch_size=8)
    args = finetune_args(stage, "in", "out", eval_blocks=32)
    assert args.eval_batches * args.batch_size == 32 and args.block_size == 256
    assert args.max_tokens == 65_536 and args.eval_on_start and args.model.init_from == "in"
    assert args.warmup_steps == 4  # an eighth of the 32 steps


def _row(model, engine, batch, speed, kv):
    return {"model": model, "engine": engine, "context": 8192, "batch": batch, "tokens_per_second": speed,
            "kv_bytes": kv}  # fmt: skip


def test_decode_goals_compare_each_llama_cpp_cell_with_the_source():
    engine = "llama.cpp (flash attention auto)"
    record = {"fraction": 0.5, "rows": [
        _row("source", engine, 1, 10.0, 100), _row("mla", engine, 1, 12.0, 50),
        _row("source", engine, 8, 40.0, 800), _row("mla", engine, 8, 30.0, 500),
        _row("source", "hf_attn", 1, 5.0, 100), _row("mla", "hf_attn", 1, 1.0, 90),
    ]}  # fmt: skip
    goals = decode_goals(record)
    assert len(goals) == 2  # llama.cpp only
    assert "KV 0.500 of the source's (goal <= 0.5): **met**" in goals[0] and "1.20x" in goals[0]
    assert goals[0].endswith("**met**")
    assert "KV 0.625" in goals[1] and "**missed**" in goals[1] and goals[1].endswith("**missed**")
    lines = decode_lines(record)
    assert len(lines) == 2 + 3 and "| 0.20 |" in lines[-1]  # hf_attn: MLA at a fifth of the source's speed
