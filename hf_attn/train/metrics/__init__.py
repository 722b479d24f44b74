"""`evaluate` metric modules shipped in the package, loaded offline by path:

import evaluate
from hf_attn.train.metrics import LM_PERPLEXITY_METRIC

metric = evaluate.load(LM_PERPLEXITY_METRIC)
metric.add_batch(nll=[12.3, 40.1], tokens=[10, 31])      # summed nats and token count per document
metric.compute(chars=180, bytes=182)                     # val_loss, perplexity, bits_per_char, bits_per_byte
"""

from pathlib import Path

LM_PERPLEXITY_METRIC = str(Path(__file__).with_name("lm_perplexity.py"))

__all__ = ["LM_PERPLEXITY_METRIC"]
