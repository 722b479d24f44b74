"""Train the project's byte-level BPE tokenizer and save it for AutoTokenizer.

hf-attn-train-tokenizer                      # default corpus -> tokenizer/
hf-attn-train-tokenizer --text-files my.txt --vocab-size 4096 --output-dir tok/
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..train.data import CorpusSpec
from ..train.tokenizer import train_tokenizer
from ..utils import AT_LEAST_ONE, check_options
from .base import command, parse


@dataclass
class TokenizerOptions:
    _argument_group_name = "tokenizer"

    vocab_size: int = field(default=8192, metadata={"help": "tokens in the vocabulary, special tokens included"})
    min_frequency: int = field(default=2, metadata={"help": "merges need at least this many occurrences"})
    output_dir: str = field(default="tokenizer", metadata={"help": "where to save the tokenizer"})

    def __post_init__(self):  # vocab_size is checked by build_bpe_tokenizer, which knows the alphabet's size
        check_options(self, {"min_frequency": AT_LEAST_ONE})


@command
def main(argv=None) -> None:
    options, corpus = parse([TokenizerOptions, CorpusSpec], argv, description=__doc__)
    _, s = train_tokenizer(corpus, options.vocab_size, options.min_frequency, options.output_dir)
    print(f"saved to {options.output_dir}/")
    print(f"vocab size: {s['vocab_size']}")
    print(
        f"corpus characters: train {s['train_chars']:,} ({s['train_documents']} documents), "
        f"validation {s['validation_chars']:,}"
    )
    print(f"validation: {s['validation_tokens']:,} tokens, {s['validation_chars_per_token']:.3f} characters per token")


if __name__ == "__main__":
    main()
