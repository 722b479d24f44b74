"""Share a trained run folder on the Hugging Face Hub, with a generated model card.

    hf-attn-push-to-hub runs/mla --repo-id USER/NAME [--private] [--revision REV]
    hf-attn-push-to-hub runs/mla --repo-id USER/NAME --dry-run staged/   # uploads nothing

Log in first with `hf auth login` or set HF_TOKEN (or pass --token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..tools.hub import HubOptions
from .base import command, parse


@dataclass
class PushOptions:
    model_dir: str | None = field(
        default=None, metadata={"help": "run folder: config.json, model.safetensors, *.py, tokenizer, metrics"}
    )
    dry_run: str | None = field(
        default=None,
        metadata={"help": "write the exact folder that would be uploaded into this folder; upload nothing"},
    )


@command
def main(argv=None) -> None:
    options, hub = parse([PushOptions, HubOptions], argv, description=__doc__, positional="model_dir")
    if options.model_dir is None:
        raise ValueError("give the run folder to share (MODEL_DIR)")
    where = hub.push(options.model_dir, dry_run_dir=options.dry_run)
    print(f"Staged the upload in {where} (nothing uploaded)" if options.dry_run else f"Uploaded to {where}")


if __name__ == "__main__":
    main()
