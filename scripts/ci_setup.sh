#!/usr/bin/env bash
# What the hub and demo tests need beyond `pip install -e ".[dev]"`: Debian's Chromium (driven by
# Playwright with executable_path; `playwright install` cannot download browsers here), Gradio,
# Playwright and olah (a local Hub mirror for the download test). Idempotent: fast when present.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi

if ! python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('gradio', 'playwright', 'olah')))"; then
    pip install -q "gradio>=6,<7" "playwright>=1.40" "olah>=0.5"
fi

# What tests/test_gguf.py needs: gguf (the writer behind hf_attn's GGUF export) and llama-cpp-python,
# which runs the exported files in real llama.cpp. llama-cpp-python builds llama.cpp from source
# (about 5 minutes on 2 cores, once: pip caches the wheel it builds).
if ! python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('llama_cpp', 'gguf')))"; then
    pip install -q "llama-cpp-python>=0.3.36,<0.4" "gguf>=0.19"
fi
