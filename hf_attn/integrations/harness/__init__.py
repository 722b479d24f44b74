"""lm-evaluation-harness tasks for hf_attn models, run offline with `--include_path`:

    lm_eval --model hf --model_args pretrained=runs/mla,trust_remote_code=True,max_length=256,dtype=float32 \\
        --include_path "$(python -m hf_attn.integrations.harness)" --tasks hf_attn_rolling --device cpu

`hf_attn_rolling` is rolling-loglikelihood perplexity (word and byte perplexity, bits per byte)
on the validation split of hf_attn's corpus: the default corpus unless `--metadata` names another
with `CorpusSpec`'s fields (`'{"text_files": ["book.txt"], "split": "chars"}'`), or on whole local
files given as `'{"eval_files": ["notes.txt", "docs.jsonl"]}'`. `python -m hf_attn.integrations.harness`
prints the folder to pass to `--include_path`.
"""

from pathlib import Path

TASK_DIR = str(Path(__file__).resolve().parent)
TASK_NAME = "hf_attn_rolling"

__all__ = ["TASK_DIR", "TASK_NAME"]
