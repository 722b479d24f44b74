"""hf_attn decoder: pre-norm blocks of RMSNorm, pluggable attention and a SwiGLU MLP, with RoPE.

One forward pass reads top to bottom through this file and one of the attention files (attention.py
for MHA/GQA/MQA, with or without a sliding window; attention_mla.py; attention_performer.py). The
decoder layer picks its attention class once, from `ATTENTION_CLASSES[config.attention_type]`.
Parameter names are transformers' Llama/DeepseekV3 names, so `to_llama()` / `to_mistral()` /
`to_deepseek_v3()` export a checkpoint that those classes load unchanged.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .attention import HfAttnAttention
from .attention_mla import HfAttnMLAttention
from .attention_performer import HfAttnPerformerAttention, padding_mask_for_new_tokens
from .configuration_hf_attn import HfAttnConfig

ATTENTION_CLASSES = {
    "mha": HfAttnAttention,
    "gqa": HfAttnAttention,
    "mqa": HfAttnAttention,
    "mla": HfAttnMLAttention,
    "performer": HfAttnPerformerAttention,
}


class HfAttnRotaryEmbedding(nn.Module):
    """Plain RoPE (Su et al. 2021) in the non-interleaved layout; returns cos/sin of shape (B, T, dim)."""

    def __init__(self, config: HfAttnConfig):
        super().__init__()
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
        self.self_attn = ATTENTION_CLASSES[config.attention_type](config, layer_idx)
        self.mlp = HfAttnMLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

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
    _can_record_outputs = {
        "hidden_states": HfAttnDecoderLayer,
        "attentions": (HfAttnAttention, HfAttnMLAttention, HfAttnPerformerAttention),
    }

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, HfAttnRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
        if isinstance(module, HfAttnPerformerAttention):
            # A checkpoint's saved projection is kept: `init.copy_` skips tensors already loaded.
            seed = int(torch.randint(0, 2**31 - 1, ()))  # from torch's global RNG: set_seed fixes it
            init.copy_(module.feature_seed, torch.tensor(seed))
            init.zeros_(module.forward_steps)
            init.copy_(module.projection, module.draw_features(seed, draw=0))


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
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
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
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        if self.config.attention_type == "performer":
            return self._performer_forward(inputs_embeds, attention_mask, cache, use_cache, **kwargs)

        past_len = cache.get_seq_length() if cache is not None else 0
        total_len = past_len + inputs_embeds.shape[1]
        # A StaticCache's length is a tensor: checking it under torch.compile would split the graph
        # (a data-dependent branch), so the compiled decode step of `generate` skips the check.
        if not torch.compiler.is_compiling() and total_len > self.config.max_position_embeddings:
            # RoPE itself would extrapolate, but the model was never trained on such positions.
            raise ValueError(
                f"Sequence length {total_len} (cached {past_len} + new {inputs_embeds.shape[1]}) exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}. Shorten the prompt or "
                "max_new_tokens."
            )
        if position_ids is None:
            # arange(T) + past, not arange(past, total): a tensor length (StaticCache) stays in the graph
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_len).unsqueeze(0)

        mask_function = create_causal_mask if self.config.sliding_window is None else create_sliding_window_causal_mask
        causal_mask = mask_function(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                position_embeddings,
                attention_mask=causal_mask,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)

    def _performer_forward(self, inputs_embeds, attention_mask, cache, use_cache, **kwargs) -> BaseModelOutputWithPast:
        """FAVOR+ layers take no positions (see attention_performer.py) and a (B, T) padding mask, not a 4D one.

        The cache holds a constant-size state with no sequence axis, so there is no cached length to
        check against `max_position_embeddings`: the model has no position embedding to run out of.
        """
        if self.training:  # the seeded redraw schedule; outside the layers, so gradient checkpointing replays none
            for layer in self.layers:
                layer.self_attn.advance_features()
        padding_mask = padding_mask_for_new_tokens(attention_mask, inputs_embeds.shape[1])
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, None, attention_mask=padding_mask, cache=cache, use_cache=use_cache, **kwargs
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


class HfAttnForCausalLM(HfAttnPreTrainedModel, GenerationMixin):
    """`HfAttnModel` with a language-modeling head; works with `generate()` and the text-generation pipeline."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Llama's: the head is split over the vocabulary and its logits gathered (with the trunk's plans in the config)
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

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
        bounded = self.config.sliding_window is not None or self.config.attention_type == "performer"
        return "dynamic" if bounded else "static"

    def __init__(self, config: HfAttnConfig):
        super().__init__(config)
        self.model = HfAttnModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate()'s cache hook: with no cache and no `cache_implementation` given, build the default one.

        Set here rather than in the saved generation config, because generate refuses a config's
        `cache_implementation` together with a cache the caller passes. The config is generate's own copy.
        Flash-attention kernels keep the DynamicCache: generate drops an all-ones mask before this hook,
        and flash attention needs it over a static cache's empty slots.
        """
        if (
            model_kwargs.get("cache") is None
            and generation_config.cache_implementation is None
            and "flash" not in (self.config._attn_implementation or "")
        ):
            generation_config.cache_implementation = self.default_cache_implementation
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
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
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


HfAttnConfig.register_for_auto_class()
HfAttnModel.register_for_auto_class("AutoModel")
HfAttnForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["HfAttnForCausalLM", "HfAttnModel", "HfAttnPreTrainedModel", "ATTENTION_CLASSES"]
