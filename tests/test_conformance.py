"""transformers' model contract, held for every design: what its common model tests check on Llama.

Each test here failed before the fix it names: hidden states and attentions reach the causal LM's output,
padding-free packed batches equal padded ones, generic code may set `sliding_window`, a RoPE scaling set
after construction is refused, and the Performer builds in float16, compiles without graph breaks, continues
generation from a returned cache, takes `cache_params` and initialises its buffers on the meta device.
"""

import copy
import inspect

import pytest
import torch
from conftest import DESIGNS
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.utils.output_capturing import OutputRecorder

from hf_attn import HfAttnConfig, HfAttnForCausalLM, HfAttnPreTrainedModel

pytestmark = pytest.mark.usefixtures("single_thread")
TOL = dict(rtol=1e-4, atol=1e-5)
WITH_WEIGHTS = [d for d in DESIGNS if d != "performer"]  # Performer forms no attention matrix
WITH_POSITIONS = WITH_WEIGHTS  # and takes no positions


@pytest.mark.parametrize("design", DESIGNS)
def test_causal_lm_returns_hidden_states_and_attentions_per_layer(make_model, design):
    model = make_model(design, attn_implementation="eager")
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
        base = model.model(ids, output_hidden_states=True)
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1
    for ours, trunk in zip(out.hidden_states, base.hidden_states):
        assert ours.shape == (2, 9, model.config.hidden_size)
        assert_close(ours, trunk)
    assert_close(out.hidden_states[-1], base.last_hidden_state)  # the last one is after the final norm
    if design in WITH_WEIGHTS:
        assert len(out.attentions) == layers
        assert all(a.shape == (2, model.config.num_attention_heads, 9, 9) for a in out.attentions)
        assert_close(out.attentions[0].sum(-1), torch.ones(2, model.config.num_attention_heads, 9))


@pytest.mark.parametrize("design", WITH_WEIGHTS)
def test_hidden_states_equal_between_eager_and_sdpa(make_model, padded_batch, design):
    eager = make_model(design, attn_implementation="eager")
    sdpa = make_model(design, attn_implementation="sdpa")
    ids, mask = padded_batch((11, 7))
    with torch.no_grad():
        a = eager(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        b = sdpa(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    valid = mask.bool()
    for x, y in zip(a, b):
        assert_close(x[valid], y[valid], **TOL)


def test_recorded_outputs_use_the_forms_transformers_accepts():
    for key, value in HfAttnPreTrainedModel._can_record_outputs.items():
        entries = value if isinstance(value, list) else [value]
        assert all(isinstance(e, (type, str, OutputRecorder)) for e in entries), key


@pytest.mark.parametrize("design", DESIGNS)
def test_generate_returns_hidden_states_and_attentions_per_step(make_model, design):
    model = make_model(design, attn_implementation="eager")
    ids = torch.randint(0, 256, (1, 5))
    out = model.generate(
        ids,
        max_new_tokens=3,
        do_sample=False,
        return_dict_in_generate=True,
        output_hidden_states=True,
        output_attentions=design in WITH_WEIGHTS,
    )
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == 3 and all(len(step) == layers + 1 for step in out.hidden_states)
    assert out.hidden_states[0][0].shape[1] == 5 and out.hidden_states[1][0].shape[1] == 1  # prefill, then one token
    if design in WITH_WEIGHTS:
        assert len(out.attentions) == 3 and all(len(step) == layers for step in out.attentions)


@pytest.mark.parametrize("design", ["mha", "gqa"])
def test_assisted_decoding_equals_greedy(make_model, design):
    """The model as its own assistant: the default static cache must not reach the assistant's calls."""
    model = make_model(design)
    # as transformers' test: the assistant drafts 2 tokens per call, so it is called again on its cache
    model.generation_config.num_assistant_tokens = 2
    model.generation_config.num_assistant_tokens_schedule = "constant"
    ids = torch.randint(0, 256, (1, 6))
    greedy = model.generate(ids, max_new_tokens=8, do_sample=False)
    assisted = model.generate(
        ids,
        max_new_tokens=8,
        do_sample=False,
        assistant_model=model,
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    assert torch.equal(greedy, assisted.sequences)
    assert all(len(step) == model.config.num_hidden_layers + 1 for step in assisted.hidden_states)


# ----------------------------------------------------------------------------- padding-free packing


def _packed_and_padded(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, 256, (n,), generator=generator) for n in lengths]
    packed = torch.cat(docs).unsqueeze(0)  # (1, sum): what DataCollatorWithFlattening sends
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)  # restarting at every document
    width = max(lengths)
    padded = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(padded)
    for row, doc in enumerate(docs):  # right padding, so each document starts at position 0
        padded[row, : len(doc)] = doc
        mask[row, : len(doc)] = 1
    return packed, positions, padded, mask


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("design", WITH_POSITIONS)
def test_packed_batch_equals_padded_batch(make_model, design, attn_implementation):
    # 3 documents of 100 tokens: the packed row is longer than max_position_embeddings (128), none of them is
    model = make_model(design, attn_implementation=attn_implementation, max_position_embeddings=128)
    lengths = (100, 37, 100)
    packed, positions, padded, mask = _packed_and_padded(lengths)
    with torch.no_grad():
        packed_logits = model(packed, position_ids=positions, use_cache=False).logits[0]
        padded_logits = model(padded, attention_mask=mask, use_cache=False).logits
    assert_close(packed_logits, padded_logits[mask.bool()], **TOL)


def test_positions_past_the_context_are_still_refused(make_model):
    model = make_model("mha", max_position_embeddings=128)
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        model(torch.randint(0, 256, (1, 10)), position_ids=torch.arange(120, 130)[None])


def test_performer_refuses_a_packed_batch(make_model):
    model = make_model("performer")
    packed, positions, _, _ = _packed_and_padded((6, 4))
    with pytest.raises(ValueError, match="packed batch"):
        model(packed, position_ids=positions)
    model(packed, position_ids=torch.arange(10)[None])  # positions that do not restart are fine


# ----------------------------------------------------------------------------- config contract


@pytest.mark.parametrize("attention_type", ["mla", "performer"])
def test_sliding_window_set_by_generic_code_changes_nothing(make_model, tmp_path, attention_type):
    """transformers' tests set `config.sliding_window` wherever the attribute exists; these designs have no window."""
    model = make_model(attention_type)
    config = copy.deepcopy(model.config)
    config.sliding_window = 2
    windowed = HfAttnForCausalLM(config).eval()
    windowed.load_state_dict(model.state_dict())
    windowed.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # the saved config is accepted
    assert reloaded.config.sliding_window == 2 and reloaded.config.layer_types == model.config.layer_types
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert_close(reloaded(ids).logits, model(ids).logits)
    assert not any(DynamicCache(config=reloaded.config).is_sliding)


def test_layer_types_follow_a_changed_sliding_window():
    config = HfAttnConfig.from_preset("tiny", attention_type="gqa")
    assert config.layer_types == ["full_attention"] * 2
    config.sliding_window = 4
    assert config.layer_types == ["sliding_attention"] * 2 and "layer_types" not in config.to_dict()
    assert all(DynamicCache(config=config).is_sliding)


def test_rope_scaling_set_after_construction_is_refused():
    config = HfAttnConfig.from_preset("tiny", attention_type="gqa")
    config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="rope_type"):
        HfAttnForCausalLM(config)


# ----------------------------------------------------------------------------- Performer


def test_performer_builds_in_float16():
    config = HfAttnConfig.from_preset("tiny", attention_type="performer")
    model = HfAttnForCausalLM._from_config(config, dtype=torch.float16)  # draws its features under a float16 default
    projection = model.model.layers[0].self_attn.projection
    assert torch.isfinite(projection).all() and projection.abs().sum() > 0


def test_performer_decode_step_compiles_as_one_graph(make_model):
    model = make_model("performer")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.long), cache=cache)
        explanation = torch._dynamo.explain(model)(
            torch.randint(0, 256, (2, 1)), attention_mask=torch.ones(2, 8, dtype=torch.long), cache=cache
        )
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("inputs", ["ids", "embeds"])
def test_performer_generation_continues_from_a_returned_cache(make_model, inputs):
    """As transformers' test: 4 tokens in one call, against 3, then 1 more from the whole sequence and the cache."""
    model = make_model("performer")
    ids = torch.randint(0, 256, (2, 6))
    embed = model.get_input_embeddings()

    def generate(sequence, new, cache=None):
        source = {"input_ids": sequence} if inputs == "ids" else {"inputs_embeds": embed(sequence)}
        return model.generate(
            **source, max_new_tokens=new, do_sample=False, return_dict_in_generate=True, past_key_values=cache
        )

    with torch.no_grad():
        whole = generate(ids, 4)
        first = generate(ids, 3)
        prefix = torch.cat([ids, first.sequences[:, -3:]], dim=1)
        rest = generate(prefix, 1, cache=first.past_key_values)
    assert torch.equal(whole.sequences[:, -4:], torch.cat([first.sequences[:, -3:], rest.sequences[:, -1:]], dim=1))
    for a, b in zip(whole.past_key_values.layers, rest.past_key_values.layers):
        assert_close(a.recurrent_states[0], b.recurrent_states[0], **TOL)  # the prefix was not read twice


def test_forwards_accept_cache_params(make_model):
    """The name transformers 5.24 passes for caches of linear-attention layers."""
    model = make_model("performer")
    for forward in (model.forward, model.model.forward):
        assert "cache" in inspect.signature(forward).parameters
    with pytest.warns(FutureWarning, match="cache_params"):
        out = model(torch.randint(0, 256, (1, 4)), cache_params=DynamicCache(config=model.config), use_cache=True)
    assert out.cache is not None and out.cache.layers[0].is_recurrent_states_initialized[0]


def test_performer_buffers_are_reproduced_by_meta_device_initialization():
    config = HfAttnConfig.from_preset("tiny", attention_type="performer", performer_seed=3)
    direct = HfAttnForCausalLM(copy.deepcopy(config))
    with torch.device("meta"):
        meta = HfAttnForCausalLM(copy.deepcopy(config))
    meta.to_empty(device="cpu")
    meta.init_weights()
    for (name, a), (_, b) in zip(direct.named_buffers(), meta.named_buffers()):
        assert torch.equal(a, b), name
    other = HfAttnForCausalLM(HfAttnConfig.from_preset("tiny", attention_type="performer", performer_seed=4))
    assert not torch.equal(direct.model.layers[0].self_attn.projection, other.model.layers[0].self_attn.projection)
