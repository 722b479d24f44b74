#!/usr/bin/env bash
# What the hub, demo and GGUF tests need beyond `pip install -e ".[dev]"`: Debian's Chromium (driven
# by Playwright with executable_path; `playwright install` cannot download browsers here), Gradio,
# Playwright and olah (a local Hub mirror for the download test), gguf and llama-cpp-python.
# Idempotent: fast when present. The pip installs take the versions pinned in constraints.txt, like
# the README's install command (HF_ATTN_CONSTRAINTS names another file; scripts/refresh_constraints.sh
# passes /dev/null to resolve them afresh).
set -euo pipefail
constraints="${HF_ATTN_CONSTRAINTS:-$(cd "$(dirname "$0")/.." && pwd)/constraints.txt}"

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi

# gguf is the writer behind hf_attn's GGUF export; llama-cpp-python runs the exported files in real
# llama.cpp (tests/test_gguf.py). llama-cpp-python builds llama.cpp from source (about 5 minutes on
# 2 cores, once: pip caches the wheel it builds). With the pinned versions installed, pip only checks them.
python -m pip install -q -c "$constraints" "gradio>=6,<7" "playwright>=1.40" "olah>=0.5" \
    "llama-cpp-python>=0.3.36,<0.4" "gguf>=0.19"
