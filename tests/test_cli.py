"""The command lines: options built from the dataclasses, one clear `error:` line for bad input."""

import json
import shutil
import subprocess

import pytest
from conftest import entry_point

from hf_attn.cli.base import parse
from hf_attn.cli.compare import parse_compare_args
from hf_attn.cli.evaluate import main as evaluate_main
from hf_attn.cli.export import main as export_main
from hf_attn.cli.push_to_hub import main as push_main
from hf_attn.cli.train import main as train_main
from hf_attn.tools.comparison.compare import DEFAULTS, QUICK
from hf_attn.train import CorpusSpec, ModelOptions, TrainOptions

pytestmark = pytest.mark.usefixtures("single_thread")
QUICK_RUN = ["--preset", "tiny", "--max-steps", "1", "--max-chars", "20000", "--block-size", "32", "--tracker", "none",
             "--no-progress"]  # fmt: skip


def expect_error(capsys, main, argv, *fragments):
    """`main(argv)` exits with status 2 after one `error: ...` line holding every fragment, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    for fragment in fragments:
        assert fragment in err[-1], err[-1]
    return err[-1]


def test_flags_are_the_dataclass_fields_with_dashes_or_underscores():
    model, corpus, options = parse([ModelOptions, CorpusSpec, TrainOptions], [
        "--attention-type", "mla", "--config_overrides", "kv_lora_rank=32", "--block-size", "64",
        "--text-files", "a.txt", "b.txt", "--no-progress", "--resume",
    ])  # fmt: skip
    assert model == ModelOptions(attention_type="mla", config_overrides="kv_lora_rank=32")
    assert model.overrides() == {"kv_lora_rank": 32, "attention_type": "mla"}
    assert corpus.text_files == ["a.txt", "b.txt"]
    assert options.block_size == 64 and options.progress is False and options.resume is True
    assert parse([TrainOptions], []) == (TrainOptions(),)


def test_compare_defaults_and_quick_settings_give_way_to_explicit_flags():
    args = parse_compare_args([])
    assert args.train.block_size == DEFAULTS["block_size"] and args.train.corpus.max_chars == DEFAULTS["max_chars"]
    assert args.train.model.preset is None and args.decode_context == 2048  # the default preset, small
    quick = parse_compare_args(["--quick", "--block-size", "16", "--variants", "mha", "mla:kv_lora_rank=8"])
    assert quick.train.block_size == 16  # given explicitly
    assert quick.train.model.preset == QUICK["preset"] and quick.decode_context == QUICK["decode_context"]
    assert quick.train.lr == DEFAULTS["lr"] and quick.variants == ("mha", "mla:kv_lora_rank=8")


def test_bad_training_input_gets_one_line(tmp_path, capsys):
    empty, latin1 = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("")
    latin1.write_bytes("café au lait".encode("latin-1"))
    out = lambda name: ["--output-dir", str(tmp_path / name)]  # noqa: E731
    expect_error(capsys, train_main, [*QUICK_RUN, "--text-files", str(empty), *out("a")], str(empty), "empty")
    expect_error(capsys, train_main, [*QUICK_RUN, "--text-files", str(latin1), *out("b")], str(latin1), "UTF-8")
    expect_error(
        capsys,
        train_main,
        [*QUICK_RUN, "--config-overrides", "num_attention_heads=3", *out("c")],
        "num_attention_heads",
    )
    expect_error(
        capsys,
        train_main,
        [*QUICK_RUN, "--block-size", "1024", *out("d")],
        "--block-size 1024",
        "max_position_embeddings",
    )
    expect_error(capsys, train_main, [*QUICK_RUN, "--resume", *out("e")], "--resume", "no checkpoint")
    expect_error(capsys, train_main, [*QUICK_RUN, "--push-to-hub", *out("f")], "--repo-id")


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr("hf_attn.cli.train.train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        train_main(QUICK_RUN)


def test_console_script_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [
            *entry_point("hf-attn-train"),
            *QUICK_RUN,
            "--config-overrides",
            "kv_heads=2",
            "--output-dir",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --config-overrides: 'kv_heads' is not an HfAttnConfig field"
    )
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from test_hub import make_run_folder

    return make_run_folder(tmp_path_factory.mktemp("run") / "tiny-mha", "mha")


def test_truncated_safetensors_is_named(run_folder, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(run_folder, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    expect_error(
        capsys,
        push_main,
        [str(bad), "--repo-id", "alice/x", "--dry-run", str(tmp_path / "up")],
        str(weights),
        "truncated or corrupt",
    )


@pytest.mark.parametrize("command", ["evaluate", "export", "train"])
def test_truncated_weights_are_named_by_every_loader(run_folder, tmp_path, capsys, command):
    bad = tmp_path / "bad"
    shutil.copytree(run_folder, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    argv = {
        "evaluate": (evaluate_main, [str(bad), "--max-chars", "20000"]),
        "export": (export_main, [str(bad), "--format", "llama", "--out", str(tmp_path / "out")]),
        "train": (train_main, ["--init-from", str(bad), "--output-dir", str(tmp_path / "t"), "--max-steps", "1"]),
    }[command]
    expect_error(capsys, *argv, str(weights), "truncated or corrupt")


def test_pickle_files_are_left_out_with_a_word(run_folder, tmp_path, capsys):
    folder = tmp_path / "with-pickle"
    shutil.copytree(run_folder, folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded, never uploaded")
    with pytest.warns(UserWarning, match="pytorch_model.bin.*left out of the upload"):
        push_main([str(folder), "--repo-id", "alice/x", "--dry-run", str(tmp_path / "up")])
    assert "pytorch_model.bin" not in {p.name for p in (tmp_path / "up").iterdir()}
    assert "Staged the upload" in capsys.readouterr().out


def test_saved_train_args_record_every_option(tmp_path, capsys):
    out = tmp_path / "run"
    train_main([*QUICK_RUN, "--attention-type", "gqa", "--output-dir", str(out), "--sample-tokens", "2"])
    record = json.loads((out / "train_args.json").read_text())
    assert record["model"] == {
        "preset": "tiny",
        "config": None,
        "init_from": None,
        "attention_type": "gqa",
        "config_overrides": None,
    }
    assert record["corpus"]["max_chars"] == 20000 and record["block_size"] == 32
    assert json.loads((out / "config.json").read_text())["attention_type"] == "gqa"
