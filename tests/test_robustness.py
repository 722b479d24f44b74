"""Nothing silent, nothing lost: damaged models, wrong resumes, full disks, huge inputs.

Each case builds its own fixture folder from a tiny model and checks that the command stops with one
`error:` line naming the file, field or flag (exit 2), that nothing was written, and that no run
was lost. Before these checks, every case here loaded a wrong model, printed a traceback, or lost
data (tests/test_robustness.py's history says which).
"""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pytest
import torch
from conftest import randomize_
from safetensors.torch import load_file, save_file
from test_cli import expect_error
from test_training import REPO, tiny_args
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.cli.evaluate import main as evaluate_main
from hf_attn.cli.export import main as export_main
from hf_attn.cli.push_to_hub import main as push_main
from hf_attn.cli.train import main as train_main
from hf_attn.tools.conversion.convert import load_source
from hf_attn.tools.demo import load_models
from hf_attn.train import train
from hf_attn.train.data import default_corpus_documents, token_ids
from hf_attn.train.loop import latest_checkpoint
from hf_attn.utils import HfAttnError, check_safetensors, to_json

pytestmark = pytest.mark.usefixtures("single_thread")
VOCAB = 300  # the model's rows; the byte tokenizer has 258 tokens
EVALUATE = ["--max-chars", "20000", "--json"]
QUICK_TRAIN = ["--preset", "tiny", "--train-tokenizer-vocab", "300", "--max-chars", "20000", "--block-size", "32",
               "--batch-size", "4", "--tracker", "none", "--no-progress", "--sample-tokens", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def good_model(tmp_path_factory, byte_tokenizer) -> Path:
    """A tiny MHA model with well-spread weights and the byte tokenizer, as save_pretrained writes them."""
    folder = tmp_path_factory.mktemp("models") / "good"
    config = HfAttnConfig.from_preset("tiny", vocab_size=VOCAB, eos_token_id=256, pad_token_id=257)
    randomize_(HfAttnForCausalLM(config)).save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def damaged(good_model, tmp_path):
    """Factory: a copy of the good model with `config(dict) -> dict` and `weights(state_dict)` applied."""

    def make(config=None, weights=None, name: str = "damaged") -> Path:
        folder = tmp_path / name
        shutil.copytree(good_model, folder)
        if config is not None:
            path = folder / "config.json"
            path.write_text(json.dumps(config(json.loads(path.read_text()))))
        if weights is not None:
            state = load_file(folder / "model.safetensors")
            weights(state)
            save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return folder

    return make


def without(key):
    return lambda config: {k: v for k, v in config.items() if k != key}


def tree_digest(folder: Path) -> dict:
    """Every path under `folder` with the SHA-256 of its bytes (folders: None): equal means untouched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def evaluate_error(capsys, folder: Path, *fragments) -> str:
    """hf-attn-evaluate --json refuses `folder`: one error line holding `fragments`, nothing on stdout."""
    line = expect_error(capsys, evaluate_main, [str(folder), *EVALUATE], *fragments)
    return line


# ---------------------------------------------------------------- silently wrong models


def test_config_without_num_hidden_layers_is_refused(damaged, capsys):
    """It loaded with the default 4 layers, two of them random, and evaluate reported a loss."""
    folder = damaged(config=without("num_hidden_layers"))
    evaluate_error(capsys, folder, str(folder / "config.json"), "num_hidden_layers")


def test_weights_missing_a_tensor_are_refused(damaged, capsys):
    """It loaded with that tensor random (transformers' load report) and evaluate reported a loss."""
    folder = damaged(weights=lambda state: state.pop("model.layers.1.mlp.up_proj.weight"))
    evaluate_error(capsys, folder, str(folder), "1 tensor missing (model.layers.1.mlp.up_proj.weight)")


def test_non_finite_weights_are_refused_and_no_nan_reaches_stdout(damaged, capsys):
    """It printed {"val_loss": NaN, ...}, which is not JSON, and exited 0."""
    folder = damaged(weights=lambda state: state["model.norm.weight"].__setitem__(0, float("nan")))
    evaluate_error(capsys, folder, str(folder), "NaN or infinite", "model.norm.weight")


@pytest.mark.parametrize("pickle", ["a state dict", "not weights"])
def test_pickle_only_folder_is_refused_without_unpickling(damaged, capsys, pickle):
    """A state dict in pytorch_model.bin was unpickled and evaluated; any other pickle gave UnpicklingError."""

    folder = damaged()
    state = load_file(folder / "model.safetensors")
    torch.save(state if pickle == "a state dict" else {"path": PurePosixPath("x")}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    evaluate_error(capsys, folder, str(folder), "pytorch_model.bin", "safetensors only")


# ---------------------------------------------------------------- tracebacks for anticipated errors


def test_config_without_hidden_size_is_refused(damaged, capsys):
    folder = damaged(config=without("hidden_size"))
    evaluate_error(capsys, folder, str(folder / "config.json"), "hidden_size")


def test_config_vocab_size_smaller_than_the_weights_is_refused(damaged, capsys):
    """transformers raised `size mismatch` after its load report: a traceback."""
    folder = damaged(config=lambda c: {**c, "vocab_size": 280})
    evaluate_error(capsys, folder, str(folder), "wrong shape", "model.embed_tokens.weight [300, 64]", "[280, 64]")


def test_tensor_of_the_wrong_shape_is_refused(damaged, capsys):
    folder = damaged(weights=lambda state: state.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(3, 3)))
    evaluate_error(capsys, folder, str(folder), "model.layers.0.mlp.up_proj.weight [3, 3]")


def test_tokenizer_larger_than_the_embedding_is_refused(damaged, capsys):
    """The byte tokenizer's ids 200..257 indexed past a 200-row embedding: `IndexError: index out of range`."""

    def shrink(state):
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            state[name] = state[name][:200].clone()

    folder = damaged(config=lambda c: {**c, "vocab_size": 200}, weights=shrink)
    evaluate_error(capsys, folder, str(folder), "258 tokens", "vocab_size is 200")


def test_config_that_is_a_json_list_is_refused(damaged, capsys):
    folder = damaged(config=lambda c: [c])
    evaluate_error(capsys, folder, str(folder / "config.json"), "JSON list")


def test_corrupt_tokenizer_json_is_named(damaged, capsys):
    """The message was `error: Expecting value: line 1 column 30`, naming no file."""
    folder = damaged()
    text = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(text[: len(text) // 2])
    evaluate_error(capsys, folder, str(folder / "tokenizer.json"), "not valid JSON")


def test_missing_tokenizer_files_are_listed(damaged, capsys):
    """transformers' five lines about sentencepiece and tiktoken, naming no file."""
    folder = damaged()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    evaluate_error(capsys, folder, str(folder), "no tokenizer files", "tokenizer.json")


def test_config_without_model_type_asks_nothing_on_stdout(damaged, capsys):
    """transformers printed "run the custom code?" on stdout, in front of the --json output."""
    folder = damaged(config=without("model_type"))
    evaluate_error(capsys, folder, str(folder / "config.json"), "model_type")
    assert capsys.readouterr().out == ""


def test_non_finite_loss_of_finite_weights_is_refused(damaged, capsys):
    """Finite weights whose logits overflow: the loss is NaN, and {"val_loss": NaN} is not JSON."""
    folder = damaged(weights=lambda state: state["lm_head.weight"].fill_(3e38))
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([str(folder), *EVALUATE])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.strip().splitlines()[-1].startswith(f"error: {folder}: the validation loss is nan")


def test_json_output_writes_null_for_nan():
    assert json.loads(to_json({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}


# ---------------------------------------------------------------- every loader


def _loaders(tmp_path: Path) -> dict:
    """Each hf_attn loader, as a function of the folder; each must raise HfAttnError or exit 2."""
    return {
        "evaluate": lambda f: evaluate_main([str(f), *EVALUATE]),
        "export": lambda f: export_main([str(f), "--format", "llama", "--out", str(tmp_path / "out")]),
        "convert": lambda f: load_source(str(f)),
        "demo": lambda f: load_models([str(f)], device="cpu"),
        "init-from": lambda f: train_main(["--init-from", str(f), "--output-dir", str(tmp_path / "t"), *INIT_FROM]),
        "push": lambda f: push_main([str(f), "--repo-id", "alice/x", "--dry-run", str(tmp_path / "up")]),
    }


INIT_FROM = ["--max-steps", "1", "--max-chars", "20000", "--tracker", "none", "--no-progress"]
DAMAGES = {
    "missing tensor": (None, lambda state: state.pop("model.layers.0.self_attn.o_proj.weight"), "missing"),
    "NaN weights": (None, lambda state: state["model.layers.0.mlp.down_proj.weight"].fill_(float("inf")), "NaN"),
    "no num_hidden_layers": (without("num_hidden_layers"), None, "num_hidden_layers"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("loader", ["evaluate", "export", "convert", "demo", "init-from", "push"])
def test_every_loader_refuses_damaged_weights(damaged, tmp_path, capsys, loader, damage):
    config, weights, fragment = DAMAGES[damage]
    folder = damaged(config=config, weights=weights)
    with pytest.raises((HfAttnError, SystemExit)) as info:
        _loaders(tmp_path)[loader](folder)
    message = str(info.value) if isinstance(info.value, HfAttnError) else capsys.readouterr().err
    if isinstance(info.value, SystemExit):
        assert info.value.code == 2 and "Traceback" not in message
    assert str(folder) in message and fragment in message, message
    assert not (tmp_path / "out").exists() and not (tmp_path / "t").exists() and not (tmp_path / "up").exists()


# ---------------------------------------------------------------- training: resume, counts, saves


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 2-step MHA run with a checkpoint at step 1, as `--resume` finds it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train_main([*QUICK_TRAIN, "--max-steps", "2", "--save-every", "1", "--output-dir", str(out)])
    return out


def test_resume_into_a_run_of_another_configuration_changes_nothing(finished, capsys):
    """It failed with `size mismatch` / `Missing key(s)`, after rewriting the run's train_args.json."""
    before = tree_digest(finished)
    argv = [*QUICK_TRAIN, "--attention-type", "gqa", "--max-steps", "3", "--output-dir", str(finished), "--resume"]
    expect_error(capsys, train_main, argv, "--resume", "--attention-type unset", "'gqa'", "nothing was changed")
    assert tree_digest(finished) == before


def test_resume_with_an_edited_config_file_changes_nothing(tmp_path, capsys):
    """Same flags, but the --config file now describes another shape: the checkpoint is refused before it loads."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                                  "intermediate_size": 64, "vocab_size": 300}))  # fmt: skip
    flags = [*QUICK_TRAIN[2:], "--config", str(config), "--save-every", "1", "--output-dir", str(tmp_path / "run")]
    train_main([*flags, "--max-steps", "2"])
    before = tree_digest(tmp_path / "run")
    config.write_text(config.read_text().replace('"num_hidden_layers": 1', '"num_hidden_layers": 2'))
    expect_error(capsys, train_main, [*flags, "--max-steps", "3", "--resume"], "checkpoint-", "missing")
    assert tree_digest(tmp_path / "run") == before


@pytest.mark.parametrize(
    "flag, value",
    [("--max-steps", "0"), ("--max-steps", "-5"), ("--eval-every", "-1"), ("--save-every", "-1"),
     ("--log-every", "-2"), ("--keep-checkpoints", "0"), ("--batch-size", "0"), ("--lr", "0.0"),
     ("--max-time", "0.0"), ("--warmup-steps", "-1")],
)  # fmt: skip
def test_counts_out_of_range_are_refused_before_anything_is_written(tmp_path, capsys, flag, value):
    """`--max-steps 0` saved an untrained model and exited 0; `--eval-every -1` was accepted."""
    out = tmp_path / "run"
    expect_error(capsys, train_main, [*QUICK_TRAIN, flag, value, "--output-dir", str(out)], f"{flag} {value}: must be")
    assert not out.exists()


OTHER_COUNTS = [
    ("evaluate", ["--batch-size", "0"]),
    ("evaluate", ["--eval-batches", "0"]),
    ("compare", ["--quick", "--decode-steps", "0"]),
    ("convert", ["--kv-lora-rank", "8", "--rope-dim", "8", "--calibration-block-size", "0"]),
    ("demo", ["--port", "0"]),
    ("train-tokenizer", ["--min-frequency", "0"]),
]


@pytest.mark.parametrize("command, flags", OTHER_COUNTS, ids=lambda v: v if isinstance(v, str) else v[-2])
def test_counts_of_the_other_commands_are_refused(good_model, tmp_path, capsys, command, flags):
    """`hf-attn-evaluate --batch-size 0` reached the DataLoader, whose message names no flag, and so on."""
    from hf_attn.cli import compare, convert, demo, train_tokenizer

    out = ["--output-dir", str(tmp_path / "out")]
    main, argv = {
        "evaluate": (evaluate_main, [str(good_model)]),
        "compare": (compare.main, out),
        "convert": (convert.main, [str(good_model), *out]),
        "demo": (demo.main, [str(good_model)]),
        "train-tokenizer": (train_tokenizer.main, out),
    }[command]
    expect_error(capsys, main, [*argv, *flags], f"{flags[-2]} {flags[-1]}: must be")
    assert not (tmp_path / "out").exists()


def test_max_steps_zero_with_overwrite_keeps_the_old_run(finished, capsys):
    """`--max-steps 0 --overwrite` replaced the run that was there with an untrained model."""
    before = tree_digest(finished)
    expect_error(capsys, train_main, [*QUICK_TRAIN, "--max-steps", "0", "--overwrite", "--output-dir", str(finished)],
                 "--max-steps 0")  # fmt: skip
    assert tree_digest(finished) == before


def test_overwrite_replaces_the_old_run_only_once_the_new_one_is_complete(tmp_path, monkeypatch):
    """--overwrite deleted the old run first: a failure (or kill) mid-way lost both runs."""
    out = tmp_path / "run"
    train(tiny_args(out, max_steps=2, save_every=1))
    before = tree_digest(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("hf_attn.train.loop.train_step", killed)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_args(out, max_steps=3, save_every=0, overwrite=True))
    assert tree_digest(out) == before
    result = train(tiny_args(out, max_steps=3, save_every=0, eval_every=0, overwrite=True))
    assert result["steps"] == 3 and not (out / "checkpoints").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left beside it


def test_a_kill_between_the_model_and_the_tokenizer_save_leaves_no_loadable_model(tmp_path, monkeypatch):
    """The model was saved at the top level, then the tokenizer: a kill in between left a folder that
    from_pretrained loaded but evaluate refused."""
    out = tmp_path / "run"
    real_save = PreTrainedTokenizerBase.save_pretrained

    def save(self, path, *args, **kwargs):
        if any(p for p in out.rglob("model.safetensors") if "checkpoints" not in p.parts):  # the final model is saved
            raise KeyboardInterrupt
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_args(out, max_steps=2, save_every=0))
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    with pytest.raises((OSError, ValueError), match="config.json"):
        AutoModelForCausalLM.from_pretrained(out)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A folder on a disk that holds one checkpoint of the tiny run and not two: a 3 MB tmpfs where this
    process may mount one, else a folder where the second checkpoint's weights fail with ENOSPC."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = shutil.which("mount") and os.geteuid() == 0
    if mounted:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)]).returncode == 0
    if not mounted:
        import accelerate.checkpointing

        real_save = accelerate.checkpointing.save

        def save(obj, path, *args, **kwargs):
            if "tmp-checkpoint-4" in str(path):
                Path(path).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(accelerate.checkpointing, "save", save)
    yield disk
    if mounted:  # lazily: the failed writer's file may still be open in the test's traceback
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_full_disk_during_a_checkpoint_is_reported_and_cleaned_up(small_disk):
    """torch's `inline_container.cc` traceback, and a partial tmp-checkpoint that kept the disk full."""
    out = small_disk / "run"
    with pytest.raises(HfAttnError) as info:
        train(tiny_args(out, max_steps=6, save_every=2, eval_every=0))
    message = str(info.value)
    assert "checkpoint at step 4" in message and str(out / "checkpoints" / "tmp-checkpoint-4") in message
    assert "MiB are free" in message and "checkpoint-2, is kept" in message
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    assert latest_checkpoint(str(out)) == str(checkpoints / "checkpoint-2")
    check_safetensors(checkpoints / "checkpoint-2" / "model.safetensors")
    assert json.loads((checkpoints / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2


def test_a_diverged_run_saves_no_model_and_writes_valid_json(tmp_path, monkeypatch):
    """A NaN validation loss went into metrics.jsonl as NaN (not JSON) and into the printed summary."""
    monkeypatch.setattr("hf_attn.train.loop.evaluate_loss", lambda *a, **k: (float("nan"), 64))
    out = tmp_path / "run"
    with pytest.raises(HfAttnError, match="training diverged: the validation loss at step 2 is nan"):
        train(tiny_args(out, max_steps=2, save_every=0))
    assert not (out / "config.json").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=pytest.fail) for line in lines]
    assert records[-1]["val_loss"] is None


# ---------------------------------------------------------------- memory of a file without newlines

MEASURE = textwrap.dedent(
    """
    import sys
    import datasets
    from transformers import AutoTokenizer
    from hf_attn.train.data import pack_splits

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    text = open(sys.argv[1]).read()
    docs = [text] if sys.argv[2] == "one" else [text[i : i + 1000] for i in range(0, len(text), 1000)]
    to_split = lambda texts: datasets.Dataset.from_dict({"text": texts})
    splits = datasets.DatasetDict(train=to_split(docs), validation=to_split([text[:9000]]))
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[3])
    tokenizer(["warm up"] * 4)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: the peak RSS (VmHWM) starts again from the current RSS
    before = status("VmRSS")
    pack_splits(splits, tokenizer, 64)
    print(status("VmHWM") - before)
    """
)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's peak-RSS reset")
def test_a_file_without_newlines_tokenizes_in_bounded_memory(tmp_path):
    """3 MB on one line as one document, against the same text as 1,000-character documents: the peak
    RSS that tokenizing and packing add stays within twice the other's (it was 7x: 443 MB against 60)."""
    text = " ".join(d.replace("\n", " ") for d in default_corpus_documents())[:3_000_000]
    path = tmp_path / "one-line.txt"
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    added = {}
    for mode in ("one", "many"):
        proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), mode, str(REPO / "tokenizer")],
                              capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        added[mode] = int(proc.stdout.split()[-1])
    assert added["one"] <= 2 * added["many"] + 16 * 2**20, added


@pytest.mark.parametrize("newlines", [True, False])
def test_long_documents_tokenized_in_pieces_give_the_same_ids(newlines):
    """The pieces end at line breaks or spaces between words: for the project's byte-level BPE the ids
    equal those of the whole text, so the golden loss curve and every corpus keep their token stream."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "tokenizer")
    text = "".join(default_corpus_documents()[:30])
    text = text if newlines else text.replace("\n", " ")
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    for size in (200, 4096):
        assert token_ids(tokenizer, [text, "a b", text], size)[2].tolist() == whole
