"""hf_attn decoder: pre-norm blocks of RMSNorm, pluggable attention and a SwiGLU MLP, with RoPE.

One forward pass reads top to bottom through this file and one of the attention files (attention.py
for MHA/GQA/MQA, with or without a sliding window; attention_mla.py; attention_performer.py). The
decoder layer picks its attention class once, from its design (`config.design.attention_class`).
Parameter names are transformers' Llama/DeepseekV3 names, so `to_llama()` / `to_mistral()` /
`to_deepseek_v3()` export a checkpoint that those classes load unchanged.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.generation.utils import GenerationMode
from transformers.masking_utils import LAYER_PATTERN_TO_MASK_FUNCTION_MAPPING, find_packed_sequence_indices
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .attention_performer import HfAttnPerformerAttention
from .attention_utils import ATTENTION_DESIGNS
from .configuration_hf_attn import HfAttnConfig

# The decoding modes whose default cache `HfAttnForCausalLM.default_cache_implementation` picks.
STATIC_CACHE_MODES = (
    GenerationMode.GREEDY_SEARCH,
    GenerationMode.SAMPLE,
    GenerationMode.BEAM_SEARCH,
    GenerationMode.BEAM_SAMPLE,
)


class HfAttnRotaryEmbedding(nn.Module):
    """Plain RoPE (Su et al. 2021) in the non-interleaved layout; returns cos/sin of shape (B, T, dim)."""

    def __init__(self, config: HfAttnConfig):
        super().__init__()
        rope_type = config.rope_parameters.get("rope_type", "default")
        if rope_type != "default":  # the config refuses it too; this catches one changed after it was built
            raise ValueError(
                f"rope_parameters['rope_type']={rope_type!r}: hf_attn implements plain RoPE only ('default'); "
                "a scaled RoPE would be ignored, so it is refused."
            )
        self.dim = config.rope_dim
        self.base = config.rope_parameters["rope_theta"]
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, dim / 2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, dim)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


class HfAttnMLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: HfAttnConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class HfAttnDecoderLayer(GradientCheckpointingLayer):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: HfAttnConfig, layer_idx: int):
        super().__init__()
        self.self_attn = config.design.attention_class(config, layer_idx)
        self.mlp = HfAttnMLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # what `zero_init_output_projections` zeroes: each branch's last projection, read by `_init_weights`
        # (the layer itself owns no parameter, so transformers never passes it to `_init_weights`)
        for linear in (self.self_attn.o_proj, self.mlp.down_proj):
            linear.ends_residual_branch = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_out, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class HfAttnPreTrainedModel(PreTrainedModel):
    config_class = HfAttnConfig
    config: HfAttnConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HfAttnDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # What `output_hidden_states` / `output_attentions` collect. transformers keeps one entry per class, so the
    # attentions are named by module path (a string matches the end of it): every design's `self_attn`.
    _can_record_outputs = {"hidden_states": HfAttnDecoderLayer, "attentions": "self_attn"}

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, HfAttnRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
        if isinstance(module, HfAttnPerformerAttention):
            # The same features as the module's own __init__ (from the config's seed); a checkpoint's saved
            # buffers are kept: `init.copy_` skips tensors already loaded.
            init.copy_(module.feature_seed, torch.tensor(module.layer_seed))
            init.zeros_(module.forward_steps)
            init.copy_(module.projection, module.draw_features(module.layer_seed, draw=0))
        if getattr(module, "ends_residual_branch", False) and self.config.zero_init_output_projections:
            init.zeros_(module.weight)


class HfAttnModel(HfAttnPreTrainedModel):
    """The decoder trunk: embeddings, layers and the final norm; returns hidden states and the cache."""

    def __init__(self, config: HfAttnConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(HfAttnDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = HfAttnRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @deprecate_kwarg("cache_params", "5.40.0", new_name="cache")  # the name transformers uses for linear caches
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # No default cache in training: nothing reads it, and filling it costs every layer an update
        # (transformers' T5Gemma does the same).
        cache_given = cache is not None
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        # e.g. Performer's feature redraws: outside the layers, so gradient checkpointing replays none
        if self.training:
            for layer in self.layers:
                if hasattr(layer.self_attn, "advance_features"):
                    layer.self_attn.advance_features()

        # A design without positions keeps no token count: transformers' linear-attention cache layers track none
        past_len = cache.get_seq_length() if cache is not None and self.config.rope_dim else 0
        given_positions = position_ids is not None
        if position_ids is None:
            # arange(T) + past, not arange(past, total): a tensor length (StaticCache) stays in the graph
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_len).unsqueeze(0)
        # Checks that read tensor values would split a compiled graph: the compiled decode step skips them.
        if not torch.compiler.is_compiling():
            # Positions given without a cache (training, padding-free packing) are read; a cached step is
            # checked by its token count, which costs the decode loop no device-to-host copy.
            read_positions = given_positions and not cache_given
            self._check_positions(position_ids, read_positions, attention_mask, past_len, inputs_embeds.shape[1])

        masks = self._layer_masks(inputs_embeds, attention_mask, cache, position_ids)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        for layer, layer_type in zip(self.layers, self.config.layer_types):
            hidden_states = layer(
                hidden_states,
                position_embeddings,
                attention_mask=masks[layer_type],
                cache=cache,
                use_cache=use_cache,
                position_ids=position_ids,  # flash kernels read packed sequences off them
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)

    def _layer_masks(self, inputs_embeds, attention_mask, cache, position_ids) -> dict:
        """One mask per layer type, from transformers' own builders (as its hybrid models do): causal, sliding
        window, or the 2D padding mask of recurrent (linear-attention) layers. A dict passed in is used as is."""
        if isinstance(attention_mask, dict):
            return attention_mask
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() != 2:
            if "linear_attention" in self.config.layer_types:  # transformers' recurrent mask would drop it silently
                raise ValueError(
                    f"attention_type={self.config.attention_type!r} takes a 2D padding mask (batch, length), "
                    f"got {attention_mask.dim()}D: its layers have no attention matrix to mask."
                )
        mask_kwargs = {
            "config": self.config,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "cache": cache,
            "position_ids": position_ids,
        }
        return {
            layer_type: LAYER_PATTERN_TO_MASK_FUNCTION_MAPPING[layer_type](**mask_kwargs)
            for layer_type in set(self.config.layer_types)
        }

    def _check_positions(self, position_ids, read_positions, attention_mask, past_len, new_len) -> None:
        """Refuse positions the model was not trained on, and packed batches a design cannot keep apart.

        Positions, not token counts: a padding-free packed batch (several documents in one row, their
        `position_ids` restarting at 0, as TRL's packing and `DataCollatorWithFlattening` send) is longer
        than any of its documents.
        """
        if self.config.rope_dim == 0:
            # No position embedding to run out of; but one running state per row, so packed documents
            # would read each other. transformers detects packing from restarting positions given with
            # neither a mask nor a cache, as padding-free collators send them.
            packed = read_positions and attention_mask is None
            if packed and find_packed_sequence_indices(position_ids) is not None:
                raise ValueError(
                    f"attention_type={self.config.attention_type!r} keeps one running state per batch row, so a "
                    "packed batch (position_ids restarting inside a row) would mix its documents: pad them instead."
                )
            return
        # RoPE itself would extrapolate, but the model was never trained on such positions.
        longest = int(position_ids.max()) + 1 if read_positions else past_len + new_len
        if longest > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {longest} (cached {past_len} + new {new_len}) exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}. Shorten the prompt or "
                "max_new_tokens."
            )


class HfAttnForCausalLM(HfAttnPreTrainedModel, GenerationMixin):
    """`HfAttnModel` with a language-modeling head; works with `generate()` and the text-generation pipeline."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Llama's: the head is split over the vocabulary and its logits gathered (with the trunk's plans in the config)
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    # Llama's FSDP2 plan for the head (the trunk's is the config's `base_model_fsdp_plan`): kept gathered
    # after forward, with the final norm, for the backward that follows at once; tied, it is the embedding's.
    _fsdp_plan = {"lm_head": "keep_full_weight"}

    @property
    def default_cache_implementation(self) -> str:
        """The cache a plain generate() builds when the caller names none: its fastest decode path.

        transformers' default DynamicCache appends with torch.cat, which copies the whole cache at every
        step; a StaticCache writes in place. scripts/bench_decode.py measures both for every design:
        static is faster wherever the cache grows with the sequence (MHA/GQA/MQA/MLA; up to 5x for MHA
        at batch 8). Performer's constant state is the same layer in both caches, and a sliding window
        keeps the dynamic cache: transformers' static sliding layer rolls its whole buffer once full (two
        copies a step), the dynamic one concatenates (one copy).
        """
        return "dynamic" if self.config.kv_cache_bounded else "static"

    def __init__(self, config: HfAttnConfig):
        super().__init__(config)
        self.model = HfAttnModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, *args, **kwargs):
        """generate()'s cache hook: with no cache and no `cache_implementation` given, build the default one.

        Set here rather than in the saved generation config, because generate refuses a config's
        `cache_implementation` together with a cache the caller passes. The config is generate's own copy.
        Only greedy, sampling and beam decoding change cache, and not inside an assistant model: assisted
        and prompt-lookup decoding crop the cache back after rejected tokens and call the assistant again
        on the same cache, which transformers does on its DynamicCache. Flash-attention
        kernels keep the DynamicCache too: generate drops an all-ones mask before this hook, and flash
        attention needs it over a static cache's empty slots.
        """
        if (
            model_kwargs.get("cache") is None
            and generation_config.cache_implementation is None
            and generation_mode in STATIC_CACHE_MODES
            and not getattr(generation_config, "is_assistant", False)  # an assistant's calls reuse one cache
            and "flash" not in (self.config._attn_implementation or "")
        ):
            generation_config.cache_implementation = self.default_cache_implementation
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, *args, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self,
        input_ids,
        next_sequence_length=None,
        cache=None,
        attention_mask=None,
        inputs_embeds=None,
        is_first_iteration=False,
        **kwargs,
    ):
        """generate()'s input step, plus what a cache of only linear-attention layers (Performer) needs.

        generate slices the already-cached prefix off a continued prompt by the cache's length, and a
        linear-attention cache reports none; the layers count the positions they have read instead. Steps
        after the first get no mask: a generated token is never padding, and a mask that grows each step
        would recompile a compiled forward every step (transformers' Mamba2 drops it the same way).
        """
        linear = cache is not None and len(cache.layers) > 0 and all(cache.is_linear)
        if linear and is_first_iteration and next_sequence_length is None:
            seen = self.model.layers[0].self_attn.cached_tokens(cache)
            new = inputs_embeds if inputs_embeds is not None else input_ids
            # as generate does for attention caches: embeddings are always the whole sequence; ids are when
            # the mask covers exactly them
            whole = inputs_embeds is not None or attention_mask is None or attention_mask.shape[1] == new.shape[1]
            if seen and whole and new.shape[1] > seen:
                next_sequence_length = new.shape[1] - seen
        inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if linear and not is_first_iteration:
            inputs["attention_mask"] = None
        return inputs

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @deprecate_kwarg("cache_params", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` are the input ids themselves (shifted inside the loss); -100 marks ignored positions."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        # logits_to_keep=N computes the head only on the last N positions (generate asks for 1)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


HfAttnConfig.register_for_auto_class()
HfAttnModel.register_for_auto_class("AutoModel")
HfAttnForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["HfAttnForCausalLM", "HfAttnModel", "HfAttnPreTrainedModel", "ATTENTION_DESIGNS"]
