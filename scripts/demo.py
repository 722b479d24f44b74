"""A local web page (Gradio) to try one or more trained models side by side.

    python scripts/demo.py runs/mla runs/gqa [--host 127.0.0.1 --port 7860]
    python scripts/demo.py USER/NAME            # a Hub id works too

Needs the `demo` extra (`pip install -e ".[demo]"`). Runs offline; Gradio analytics are off.
"""

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from hf_attn.demo import DemoError, launch, load_models  # noqa: E402  (after the analytics switch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help="run folder or Hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = p.parse_args(argv)
    try:
        models = load_models(args.models, device=args.device)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Serving {', '.join(m.name for m in models)} on http://{args.host}:{args.port}", flush=True)
    launch(models, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
