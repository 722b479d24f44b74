"""A local web page (Gradio) to try one or more trained models side by side.

    hf-attn-demo runs/mla runs/gqa [--host 127.0.0.1 --port 7860]
    hf-attn-demo USER/NAME            # a Hub id works too

Needs the `demo` extra (`pip install -e ".[demo]"`). Runs offline; Gradio analytics are off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..utils import check_options
from .base import command, parse


@dataclass
class DemoOptions:
    models: list[str] | None = field(default=None, metadata={"help": "run folders or Hub ids"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to serve on (default: this machine only)"})
    port: int = field(default=7860, metadata={"help": "port to serve on"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda if available)"})

    def __post_init__(self):
        check_options(self, {"port": (lambda v: 1 <= v <= 65535, "between 1 and 65535")})


@command
def main(argv=None) -> None:
    (options,) = parse([DemoOptions], argv, description=__doc__, positional="models")
    if not options.models:
        raise ValueError("give at least one run folder or Hub id (MODEL ...)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
    from ..tools.demo import launch, load_models

    models = load_models(options.models, device=options.device)
    print(f"Serving {', '.join(m.name for m in models)} on http://{options.host}:{options.port}", flush=True)
    launch(models, host=options.host, port=options.port)


if __name__ == "__main__":
    main()
