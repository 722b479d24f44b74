"""Strict loading of saved models and tokenizers: every hf_attn loader goes through here.

transformers' `from_pretrained` is lenient by design: a config.json without `num_hidden_layers` takes
the class default, weights missing from the file are initialised at random (with a printed load
report), a folder holding only `pytorch_model.bin` is unpickled, and a config without `model_type`
asks "run the custom code?" on stdout. Here each of those is refused with one `HfAttnError` naming
the file and the first offending field or tensors, before transformers sees the folder:

- `read_config`: config.json is a JSON object with an accepted `model_type` and every shape field
  (`REQUIRED_FIELDS`);
- `check_weights`: the weights are safetensors (a pickle-only folder is refused, never unpickled),
  each file complete;
- `check_coverage`: the files hold exactly the tensors the model has, each of its shape (a tied
  `lm_head` may be left out), compared on an empty (meta-device) model built from the config;
- `load_model`: all of that, then `from_pretrained(use_safetensors=True)`, its loading info checked
  again, and every floating-point tensor finite;
- `load_tokenizer`: a corrupt tokenizer.json is named with its parse error, a folder without
  tokenizer files says which files it looked for, and a tokenizer larger than the model's
  `vocab_size` is refused (its ids would index past the embedding).

A Hub id gets the same checks on its downloaded files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .utils import HfAttnError, check_safetensors

HF_ATTN = "hf_attn"
# Fields that size a weight: a config.json without one would take the class default silently.
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What AutoTokenizer can load a tokenizer from; a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tiktoken.model")
SHOW = 3  # offending tensors named in a message


def _local_file(name_or_path: str, filename: str) -> str | None:
    """`filename` in a local folder, or downloaded from the Hub repo `name_or_path` (None if absent)."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)


def _read_json(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HfAttnError(f"{path}: not valid JSON ({e})") from None


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _names(items) -> str:
    items = sorted(items)
    more = f" and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def read_json_object(path: str) -> dict:
    """A JSON file that must hold one object (a config), refused with its name otherwise."""
    value = _read_json(path)
    if not isinstance(value, dict):
        raise HfAttnError(f"{path}: holds a JSON {type(value).__name__}, not an object of config fields")
    return value


def read_config(name_or_path: str, accept: tuple[str, ...] = (HF_ATTN,)) -> dict:
    """The checked config.json of a saved model folder (or Hub id): its `model_type` is in `accept`
    and every `REQUIRED_FIELDS` entry is present."""
    if not os.path.isdir(name_or_path) and (os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~"))):
        raise HfAttnError(f"{name_or_path}: no such model folder")
    path = _local_file(name_or_path, "config.json")
    if path is None:
        raise HfAttnError(f"{name_or_path}: no config.json (not a saved model folder)")
    config = read_json_object(path)
    model_type = config.get("model_type")
    if model_type is None:
        raise HfAttnError(f'{path}: no model_type (an hf_attn config has "model_type": "{HF_ATTN}")')
    if model_type not in accept:
        wanted = " or ".join(repr(t) for t in accept)
        raise HfAttnError(f"{path}: model_type {model_type!r} is not accepted here (expected {wanted})")
    missing = [k for k in REQUIRED_FIELDS if config.get(k) is None]
    if missing:
        raise HfAttnError(f"{path}: no {', '.join(missing)}; the weights' shapes cannot be checked without it")
    return config


# ---------------------------------------------------------------- weights


def weight_files(name_or_path: str) -> list[str]:
    """The safetensors files of a model (one, or the shards an index names); refuses pickle-only folders."""
    single = _local_file(name_or_path, "model.safetensors")
    if single is not None:
        files = [single]
    elif (index := _local_file(name_or_path, "model.safetensors.index.json")) is not None:
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HfAttnError(f"{index}: no weight_map")
        files = []
        for shard in sorted(set(weight_map.values())):
            path = _local_file(name_or_path, shard)
            if path is None:
                raise HfAttnError(f"{index}: names {shard}, which is missing")
            files.append(path)
    else:
        pickles = []
        if os.path.isdir(name_or_path):
            pickles = sorted(p.name for p in Path(name_or_path).iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise HfAttnError(
                f"{name_or_path}: holds only pickle weights ({', '.join(pickles)}); hf_attn loads safetensors only "
                "(unpickling can run code): re-save with save_pretrained(..., safe_serialization=True)"
            )
        raise HfAttnError(f"{name_or_path}: no model.safetensors (hf_attn loads safetensors weights only)")
    return files


def check_weights(name_or_path: str) -> list[str]:
    """`weight_files`, each checked to be a complete safetensors file (`utils.check_safetensors`)."""
    files = weight_files(name_or_path)
    for path in files:
        try:
            check_safetensors(path)
        except ValueError as e:
            raise HfAttnError(str(e)) from None
    return files


def file_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers alone."""
    from safetensors import safe_open

    shapes = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _ignored(name: str, patterns) -> bool:
    return any(re.search(p, name) for p in patterns or ())


def check_coverage(
    where: str,
    model: torch.nn.Module,
    shapes: dict[str, tuple[int, ...]],
    against: str = "config.json",
    hint: str = "the folder holds another model's weights, or a damaged file",
) -> None:
    """Refuse weights that are missing, unexpected or of the wrong shape for `model` (it may sit on 'meta').

    A parameter tied to another (lm_head to the embedding) needs only one of its names in the file.
    `against` names what described the model, `hint` what the mismatch suggests.
    """
    state = model.state_dict(keep_vars=True)
    names_of: dict[int, list[str]] = {}
    for name, tensor in state.items():
        names_of.setdefault(id(tensor), []).append(name)
    ignore_missing = getattr(model, "_keys_to_ignore_on_load_missing", None)
    ignore_unexpected = getattr(model, "_keys_to_ignore_on_load_unexpected", None)
    missing = [
        names[0]
        for names in names_of.values()
        if not any(n in shapes for n in names) and not _ignored(names[0], ignore_missing)
    ]
    unexpected = [n for n in shapes if n not in state and not _ignored(n, ignore_unexpected)]
    wrong = [
        f"{n} {list(shapes[n])} (the model has {list(state[n].shape)})"
        for n in shapes
        if n in state and tuple(state[n].shape) != shapes[n]
    ]
    problems = []
    if missing:
        problems.append(f"{_count(len(missing), 'tensor')} missing ({_names(missing)})")
    if unexpected:
        problems.append(f"{_count(len(unexpected), 'tensor')} unexpected ({_names(unexpected)})")
    if wrong:
        problems.append(f"{_count(len(wrong), 'tensor')} of the wrong shape ({'; '.join(sorted(wrong)[:SHOW])})")
    if problems:
        raise HfAttnError(f"{where}: the weights do not match {against}: {', '.join(problems)}; {hint}")


def check_finite(where: str, tensors) -> None:
    """Refuse NaN or infinite values in any floating-point tensor of `tensors` ((name, tensor) pairs)."""
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise HfAttnError(f"{where}: {_count(len(bad), 'tensor')} with NaN or infinite values ({_names(bad)})")


def _config_object(name_or_path: str, model_class, config):
    if config is not None:
        return config
    if model_class is None:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=True)
    return model_class.config_class.from_pretrained(name_or_path)


def _empty_model(model_class, config) -> torch.nn.Module:
    """The model `config` describes, on the meta device: its tensor names and shapes, no memory."""
    with torch.device("meta"):
        if model_class is None:
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        return model_class(config)


def check_model_folder(
    name_or_path: str,
    accept: tuple[str, ...] = (HF_ATTN,),
    model_class=None,
    config=None,
    finite: bool = True,
):
    """Every check of `load_model` that needs no loaded model; returns the config object.

    With `finite`, also reads each tensor from the files (one at a time) and refuses NaN/Inf.
    """
    read_config(name_or_path, accept)
    files = check_weights(name_or_path)
    try:
        config = _config_object(name_or_path, model_class, config)
    except (ValueError, TypeError) as e:  # HfAttnConfig's own checks name the field
        raise HfAttnError(f"{name_or_path}/config.json: {e}") from None
    check_coverage(name_or_path, _empty_model(model_class, config), file_shapes(files))
    if finite:
        from safetensors import safe_open

        for path in files:
            with safe_open(path, framework="pt") as f:
                check_finite(path, ((name, f.get_tensor(name)) for name in f.keys()))
    return config


def load_model(
    name_or_path: str,
    model_class=None,
    accept: tuple[str, ...] = (HF_ATTN,),
    config=None,
    dtype: torch.dtype | str | None = torch.float32,
    device: str | torch.device | None = None,
):
    """A saved model, loaded only if its files describe it completely; in eval mode.

    `model_class` (default: `AutoModelForCausalLM` with `trust_remote_code=True`, so the folder's own
    code runs where hf_attn is not installed) is built from `config` (default: the folder's).
    """
    config = check_model_folder(name_or_path, accept, model_class, config, finite=False)
    kwargs = dict(config=config, dtype=dtype, use_safetensors=True, output_loading_info=True)
    if model_class is None:
        from transformers import AutoModelForCausalLM

        model, info = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=True, **kwargs)
    else:
        model, info = model_class.from_pretrained(name_or_path, **kwargs)
    off = [*info["missing_keys"], *info["unexpected_keys"], *(k[0] for k in info["mismatched_keys"])]
    if off:  # check_coverage already compared the names; this is transformers' own account
        raise HfAttnError(f"{name_or_path}: transformers did not load every tensor ({_names(off)})")
    check_finite(name_or_path, model.state_dict().items())
    if device is not None:
        model.to(device)
    return model.eval()


# ---------------------------------------------------------------- tokenizers


def tokenizer_files(folder: str) -> list[str]:
    """The files of `TOKENIZER_FILES` in a local folder."""
    return [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(folder, f))]


def check_tokenizer_files(name_or_path: str) -> None:
    """A local folder has tokenizer files, and its tokenizer.json (if any) is valid JSON."""
    if not os.path.isdir(name_or_path):
        return  # a Hub id: AutoTokenizer downloads and checks
    if not tokenizer_files(name_or_path):
        raise HfAttnError(
            f"{name_or_path}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer there with save_pretrained"
        )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(name_or_path, name)
        if os.path.isfile(path):
            read_json_object(path)


def load_tokenizer(name_or_path: str, vocab_size: int | None = None):
    """AutoTokenizer's tokenizer of a folder or Hub id, every failure named; with `vocab_size`, refused if
    it has more tokens than the model's embedding rows."""
    from transformers import AutoTokenizer

    if not os.path.isdir(name_or_path) and os.path.exists(name_or_path):
        raise HfAttnError(f"{name_or_path}: not a tokenizer folder")
    check_tokenizer_files(name_or_path)
    try:
        # trust_remote_code=False: a config with custom code is refused here instead of a prompt on stdout.
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exceptions; every failure is about these files
        first = (str(e).strip().splitlines() or [""])[0]
        raise HfAttnError(f"{name_or_path}: the tokenizer does not load ({type(e).__name__}: {first})") from None
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise HfAttnError(
            f"{name_or_path}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size} "
            "(config.json); its ids would index past the embedding"
        )
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str,
    model_class=None,
    accept: tuple[str, ...] = (HF_ATTN,),
    dtype: torch.dtype | str | None = torch.float32,
    device: str | torch.device | None = None,
):
    """`load_tokenizer` checked against the model's vocab_size, then `load_model`: (model, tokenizer)."""
    config = read_config(name_or_path, accept)
    tokenizer = load_tokenizer(name_or_path, vocab_size=config["vocab_size"])
    return load_model(name_or_path, model_class, accept, dtype=dtype, device=device), tokenizer
