"""Documents of the `hf_attn_rolling` lm-evaluation-harness task (imported by the harness from its file).

`load_docs(**metadata)` gets the harness's `--metadata` merged with the `--model_args`; it keeps
`CorpusSpec`'s fields and `eval_files` and ignores the rest (pretrained=..., max_length=...).
"""

import dataclasses

import datasets

from hf_attn.train.data import CorpusSpec, expand_text_files, load_text_splits


def load_docs(eval_files=None, **metadata) -> datasets.DatasetDict:
    """A "validation" split with a "text" column: whole `eval_files`, or the validation split of a CorpusSpec."""
    if eval_files:
        return datasets.DatasetDict(validation=datasets.Dataset.from_dict({"text": read_documents(eval_files)}))
    fields = {f.name for f in dataclasses.fields(CorpusSpec)}
    spec = CorpusSpec(**{k: v for k, v in metadata.items() if k in fields})
    return datasets.DatasetDict(validation=load_text_splits(spec)["validation"])


def read_documents(eval_files) -> list[str]:
    """A .txt file is one document; a .json/.jsonl file has one document per row in its "text" field."""
    texts = []
    for path in expand_text_files([eval_files] if isinstance(eval_files, str) else list(eval_files)):
        if path.endswith((".json", ".jsonl")):
            texts += [t for t in datasets.load_dataset("json", data_files=path, split="train")["text"] if t]
        else:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
    return texts


def doc_to_target(doc: dict) -> str:
    return doc["text"]
