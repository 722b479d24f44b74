"""Print the folder of hf_attn's lm-evaluation-harness tasks, for `lm_eval --include_path`."""

from . import TASK_DIR

print(TASK_DIR)
