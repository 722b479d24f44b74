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
