"""Convert an MHA/GQA/MQA model or a Llama checkpoint to MLA (same as `hf-attn-convert`)."""

from hf_attn.cli.convert import main

if __name__ == "__main__":
    main()
