"""Train the project's byte-level BPE tokenizer and save it for AutoTokenizer.

    python scripts/train_tokenizer.py                      # default corpus -> tokenizer/
    python scripts/train_tokenizer.py --text-files my.txt --vocab-size 4096 --output-dir tok/
"""

import argparse

from hf_attn.data import add_data_args, spec_from_args
from hf_attn.tokenization import train_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--output-dir", default="tokenizer")
    add_data_args(parser)
    args = parser.parse_args()
    _, s = train_tokenizer(
        spec_from_args(args), args.vocab_size, args.min_frequency, args.output_dir
    )
    print(f"saved to {args.output_dir}/")
    print(f"vocab size: {s['vocab_size']}")
    print(f"corpus characters: train {s['train_chars']:,} ({s['train_documents']} documents), "
          f"validation {s['validation_chars']:,}")
    print(f"validation: {s['validation_tokens']:,} tokens, "
          f"{s['validation_chars_per_token']:.3f} characters per token")


if __name__ == "__main__":
    main()
