"""A local web page to try trained models: one prompt, streamed output from each model side by side.

`load_models` loads run folders or Hub ids (failing with the path in the message), `stream_all`
streams the same prompt through every model at once (transformers' `TextIteratorStreamer`, one
generate thread per model), and `build_app` lays out the Gradio page. Gradio is imported only in
`build_app`/`launch`, so the loading and generation logic runs and is tested without it.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import torch
from transformers import TextIteratorStreamer

from ..loading import load_model_and_tokenizer
from ..utils import HfAttnError
from .hub import format_bytes

# Gradio sends usage statistics by default; the demo runs offline and sends nothing.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ERROR_PREFIX = "⚠ Error: "


class DemoError(HfAttnError):
    """A model given to the demo cannot be loaded; the message names it."""


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object

    @property
    def info(self) -> str:
        """Attention type and KV-cache size, shown beside the model's output."""
        config = self.model.config
        attn = getattr(config, "attention_type", config.model_type)
        lines = [f"**{self.name}**", f"attention: `{attn}`"]
        elems = getattr(config, "kv_cache_elements_per_token", None)
        ctx = getattr(config, "max_position_embeddings", None)
        if elems == 0:  # a state that does not grow with the context (Performer's: float32 sums)
            state = config.kv_cache_elements(ctx)
            lines.append(f"decode state: {state:,} elements = {format_bytes(4 * state)} in float32, at any context")
        elif elems is not None:
            nbytes = elems * self.model.dtype.itemsize
            full = (
                config.kv_cache_elements(ctx) * self.model.dtype.itemsize
                if hasattr(config, "kv_cache_elements")
                else nbytes * ctx
            )
            window = getattr(config, "effective_sliding_window", getattr(config, "sliding_window", None))
            lines.append(
                f"KV cache: {elems:,} elements/token = {format_bytes(nbytes)}/token in "
                f"{str(self.model.dtype).removeprefix('torch.')}"
                + (f" up to the {window:,}-token window" if window else "")
                + f"; {format_bytes(full)} at the full {ctx:,}-token context"
            )
        params = sum(p.numel() for p in self.model.parameters())
        lines.append(f"parameters: {params:,}")
        return "  \n".join(lines)


def load_models(specs: list[str], device: str | None = None) -> list[LoadedModel]:
    """Load each run folder or Hub id; raise DemoError naming the first one that fails."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = []
    for spec in specs:
        looks_like_path = os.path.exists(spec) or spec.startswith((".", "/", "~")) or spec.count("/") > 1
        if looks_like_path and not (Path(spec).expanduser() / "config.json").is_file():
            raise DemoError(f"Model path {spec!r} is not a model folder (no config.json there).")
        try:
            model, tokenizer = load_model_and_tokenizer(spec, dtype="auto", device=device)
        except Exception as e:  # any loading failure ends startup, naming the model
            raise DemoError(f"Cannot load model {spec!r}: {type(e).__name__}: {e}") from e
        name = Path(spec).name if looks_like_path else spec
        loaded.append(LoadedModel(name=name, model=model, tokenizer=tokenizer))
    return loaded


def generation_kwargs(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> dict:
    """Sampling settings from the page's controls; temperature 0 means greedy decoding."""
    kwargs = dict(max_new_tokens=int(max_new_tokens))
    if temperature <= 0:
        return kwargs | dict(do_sample=False)
    return kwargs | dict(do_sample=True, temperature=float(temperature), top_k=int(top_k) or None, top_p=float(top_p))


def stream_all(
    models: list[LoadedModel],
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 0.95,
    poll_s: float = 0.05,
) -> Iterator[list[str]]:
    """Generate from `prompt` with every model at once; yield the texts so far, one per model.

    A model whose generation fails shows the error in place of its text; the others go on.
    """
    texts = ["" for _ in models]
    if not prompt:
        yield [ERROR_PREFIX + "type a prompt first." for _ in models]
        return
    kwargs = generation_kwargs(max_new_tokens, temperature, top_k, top_p)
    streamers, threads, errors = [], [], [None] * len(models)
    for i, m in enumerate(models):
        streamer = TextIteratorStreamer(m.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=poll_s)
        inputs = m.tokenizer(prompt, return_tensors="pt").to(m.model.device)
        t = Thread(target=_generate, args=(m, inputs, streamer, kwargs, errors, i), daemon=True)
        t.start()
        streamers.append(streamer)
        threads.append(t)
    active = set(range(len(models)))
    while active:
        for i in sorted(active):
            try:
                texts[i] += next(streamers[i])
            except queue.Empty:
                continue
            except StopIteration:
                active.discard(i)
                threads[i].join()
                if errors[i] is not None:
                    texts[i] += ("\n" if texts[i] else "") + ERROR_PREFIX + errors[i]
        yield list(texts)
    yield list(texts)


def _generate(m: LoadedModel, inputs, streamer: TextIteratorStreamer, kwargs: dict, errors: list, i: int):
    try:
        with torch.no_grad():
            m.model.generate(**inputs, streamer=streamer, pad_token_id=m.tokenizer.pad_token_id, **kwargs)
    except Exception as e:  # shown on the page; the server keeps serving
        errors[i] = f"{type(e).__name__}: {e}"
        streamer.end()  # wakes the reader with whatever was decoded so far


def build_app(models: list[LoadedModel]):
    """The Gradio page: a prompt, sampling controls, and one output column per model."""
    import gradio as gr

    with gr.Blocks(title="hf_attn demo", analytics_enabled=False) as app:
        gr.Markdown("# hf_attn demo\nThe same prompt runs on every model; output streams as it is generated.")
        prompt = gr.Textbox(label="Prompt", value="In the beginning", lines=3, elem_id="prompt")
        with gr.Row():
            max_new = gr.Slider(1, 512, value=64, step=1, label="max new tokens", elem_id="max_new_tokens")
            temperature = gr.Slider(
                0.0, 2.0, value=0.8, step=0.05, label="temperature (0 = greedy)", elem_id="temperature"
            )
            top_k = gr.Slider(0, 200, value=50, step=1, label="top-k (0 = off)", elem_id="top_k")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p", elem_id="top_p")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        outputs = []
        with gr.Row():
            for i, m in enumerate(models):
                with gr.Column():
                    gr.Markdown(m.info, elem_id=f"info-{i}")
                    outputs.append(
                        gr.Textbox(label=f"{m.name} output", lines=12, interactive=False, elem_id=f"output-{i}")
                    )

        def run(prompt_text, n, temp, k, p):
            yield from stream_all(models, prompt_text, n, temp, k, p)

        button.click(run, [prompt, max_new, temperature, top_k, top_p], outputs)
        prompt.submit(run, [prompt, max_new, temperature, top_k, top_p], outputs)
    return app


def launch(models: list[LoadedModel], host: str = "127.0.0.1", port: int = 7860):
    """Serve the page until interrupted."""
    import gradio as gr

    # System fonts only: the default theme would ask a web font service, which is not reachable offline.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    build_app(models).queue().launch(
        server_name=host, server_port=port, share=False, theme=theme, footer_links=[], ssr_mode=False, mcp_server=False
    )


__all__ = ["DemoError", "LoadedModel", "load_models", "stream_all", "build_app", "launch"]
