"""Share a trained run folder on the Hugging Face Hub, with a generated model card.

    python scripts/push_to_hub.py runs/mla --repo-id USER/NAME [--private] [--revision REV]
    python scripts/push_to_hub.py runs/mla --repo-id USER/NAME --dry-run staged/   # uploads nothing

Log in first with `hf auth login` or set HF_TOKEN (or pass --token).
"""

import argparse
import sys

from hf_attn.hub import LICENSE, HubError, push_to_hub


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="run folder: config.json, model.safetensors, *.py, tokenizer, metrics.jsonl, loss.png")
    p.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", help="branch to upload to (created if missing); default: main")
    p.add_argument("--dry-run", metavar="DIR", help="write the exact folder that would be uploaded into DIR; upload nothing")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")
    p.add_argument("--license", default=LICENSE, help=f"license for the card metadata (default: {LICENSE})")
    p.add_argument("--dataset", action="append", dest="datasets", help="Hub dataset id trained on (repeatable)")
    p.add_argument("--training-data", help="free-text description of the training data for the card")
    args = p.parse_args(argv)
    try:
        where = push_to_hub(
            args.model_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            dry_run_dir=args.dry_run,
            token=args.token,
            license=args.license,
            datasets=args.datasets,
            training_data=args.training_data,
        )
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Staged the upload in {where} (nothing uploaded)" if args.dry_run else f"Uploaded to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
