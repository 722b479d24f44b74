"""Training: corpora and packing, tokenizer training, the accelerate loop, evaluation, the run report.

Imports only point down: this package uses `hf_attn.model` and `hf_attn.utils`, never the tools.
"""

from .data import CorpusSpec
from .loop import train
from .options import ModelOptions, TrainArgs, TrainOptions

__all__ = ["CorpusSpec", "ModelOptions", "TrainArgs", "TrainOptions", "train"]
