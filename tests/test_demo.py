"""The web demo: streaming side by side, errors shown per request, a bad path at startup, and the
real page driven by headless Chromium (Debian's package, through Playwright)."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import entry_point
from test_hub import free_port, make_run_folder, stop, wait_for_http

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.cli.demo import main as demo_main
from hf_attn.tools.demo import ERROR_PREFIX, LoadedModel, load_models, stream_all

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = "In the beginning"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_models")
    return [make_run_folder(root / "tiny-mla", "mla", seed=0), make_run_folder(root / "tiny-gqa", "gqa", seed=1)]


@pytest.fixture(scope="module")
def models(model_dirs):
    return load_models([str(d) for d in model_dirs], device="cpu")


def greedy(m, prompt: str, n: int) -> str:
    ids = m.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = m.model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
    return m.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_info_shows_attention_and_kv_cache(models):
    mla, gqa = models
    assert "attention: `mla`" in mla.info and "attention: `gqa`" in gqa.info
    # tiny MLA: (kv_lora_rank 64 + rope 8) x 2 layers = 144 elements x 4 bytes
    assert "KV cache: 144 elements/token = 576 B/token in float32" in mla.info
    kv = gqa.model.config.kv_cache_elements_per_token  # 2 x 2 kv heads x 16 x 2 layers = 128
    assert f"KV cache: {kv} elements/token = {kv * 4} B/token" in gqa.info


def test_stream_side_by_side_equals_generate(models):
    steps = list(stream_all(models, PROMPT, max_new_tokens=24, temperature=0.0))
    assert steps[-1] == [greedy(m, PROMPT, 24) for m in models]
    assert all(steps[-1]) and len({tuple(s) for s in steps}) > 2  # text arrived in pieces


def test_failed_request_is_shown_and_next_one_works(models):
    # 300 new tokens run past max_position_embeddings=256: the model raises mid-stream.
    final = list(stream_all(models, PROMPT, max_new_tokens=300, temperature=0.0))[-1]
    failed = [t for t in final if ERROR_PREFIX + "ValueError: Sequence length" in t]
    assert failed, final  # at least one model ran past the limit (the other may stop at EOS)
    assert list(stream_all(models, PROMPT, max_new_tokens=5, temperature=0.0))[-1] == [
        greedy(m, PROMPT, 5) for m in models
    ]
    assert list(stream_all(models, "", 5))[-1] == [ERROR_PREFIX + "type a prompt first."] * 2


def test_bad_model_path_fails_at_startup(tmp_path, model_dirs, capsys):
    bad = str(tmp_path / "no-such-run")
    with pytest.raises(SystemExit) as exit_info:
        demo_main([str(model_dirs[0]), bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and bad in err and "not a model folder" in err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/ci_setup.sh installs it)")
def test_page_in_headless_chromium(model_dirs, models, tmp_path):
    pytest.importorskip("gradio", reason="the demo extra is not installed (scripts/ci_setup.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/ci_setup.sh)")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "demo.log", "w") as log:  # the server keeps its own copy of the file
        server = subprocess.Popen(
            [*entry_point("hf-attn-demo"), *map(str, model_dirs), "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_http(url, server, tmp_path / "demo.log")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url, wait_until="domcontentloaded", timeout=30_000)
                page.locator("#prompt textarea").fill(PROMPT)
                set_number(page, "#temperature", "0")  # greedy, so the page text can be checked exactly
                set_number(page, "#max_new_tokens", "16")
                page.locator("#generate").click()
                expected = [greedy(m, PROMPT, 16) for m in models]
                outputs = [page.locator(f"#output-{i} textarea") for i in range(2)]
                deadline = time.monotonic() + 300  # a hang guard only: the assertion below is on the text
                while [o.input_value() for o in outputs] != expected and time.monotonic() < deadline:
                    time.sleep(0.2)
                got = [o.input_value() for o in outputs]
                shot = tmp_path / "demo.png"
                page.screenshot(path=str(shot), full_page=True)
                ARTIFACTS.mkdir(exist_ok=True)
                shutil.copy(shot, ARTIFACTS / "demo.png")
                assert got == expected
                assert "attention: mla" in page.locator("#info-0").inner_text()
                assert "KV cache: 144 elements/token" in page.locator("#info-0").inner_text()
                assert "attention: gqa" in page.locator("#info-1").inner_text()
            finally:
                browser.close()
    finally:
        stop(server)


def set_number(page, elem_id: str, value: str):
    """Type into a Gradio slider's number box and commit it (Gradio applies it on blur)."""
    box = page.locator(f"{elem_id} input[type=number]")
    box.fill(value)
    box.press("Tab")


def test_info_shows_bounded_caches():
    performer = HfAttnForCausalLM(HfAttnConfig.from_preset("tiny", attention_type="performer"))
    info = LoadedModel("p", performer, None).info
    # 2 layers x 4 K/V heads x (64 features + 1 count row) x (16 + 1), float32 sums
    assert "attention: `performer`" in info and "decode state: 8,840 elements = " in info and "at any context" in info
    window = HfAttnForCausalLM(HfAttnConfig.from_preset("tiny", attention_type="gqa", sliding_window=16))
    info = LoadedModel("w", window, None).info
    # 128 elements x 4 bytes per token up to the window; the cache holds 15 tokens at any longer context
    assert "KV cache: 128 elements/token = 512 B/token in float32 up to the 16-token window" in info
    assert "7.5 KiB at the full 256-token context" in info
