"""Hub sharing without the Hub: the staged upload folder, its model card, loading it where hf_attn
is not importable (from a folder, and by repo id over HTTP from a local olah mirror), and the
error paths of push_to_hub. Nothing here contacts the real Hub."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError

from hf_attn import HfAttnConfig, HfAttnForCausalLM
from hf_attn.cli.push_to_hub import main as push_main
from hf_attn.tools import hub
from hf_attn.tools.hub import HubError, push_to_hub
from hf_attn.train.tokenizer import build_bpe_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "alice/tiny-mla"
PROMPT = "In the beginning"
EXPECTED_FILES = {
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "configuration_hf_attn.py",
    "modeling_hf_attn.py",
    "attention.py",
    "attention_utils.py",
    "attention_mla.py",
    "attention_performer.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "loss.png",
}


def make_run_folder(path: Path, attention_type: str = "mla", seed: int = 0) -> Path:
    """A run folder as scripts/train.py writes it: a random-init tiny model, a tiny BPE tokenizer,
    metrics.jsonl, loss.png and report.md, plus files that must never be uploaded."""
    path.mkdir(parents=True, exist_ok=True)
    texts = ["In the beginning God created the heaven and the earth. And the earth was without form."] * 8
    tok = build_bpe_tokenizer(texts, vocab_size=300, min_frequency=1, show_progress=False)
    config = HfAttnConfig.from_preset(
        "tiny", attention_type=attention_type, vocab_size=len(tok), bos_token_id=0, eos_token_id=0, pad_token_id=1
    )
    torch.manual_seed(seed)
    HfAttnForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    with open(path / "metrics.jsonl", "w") as f:
        for i in range(12):
            loss = 5.0 - 0.25 * i
            f.write(
                json.dumps(
                    dict(
                        step=100 * (i + 1),
                        tokens=6400 * (i + 1),
                        train_loss=loss + 0.1,
                        val_loss=loss,
                        val_bits_per_char=loss / 2,
                        val_bits_per_byte=loss / 2.1,
                        perplexity=2.718281828**loss,
                        lr=3e-4,
                        elapsed_s=1.5 * i,
                    )
                )
                + "\n"
            )
    # A minimal valid PNG (1x1): the card only references the file, it need not be a real plot.
    (path / "loss.png").write_bytes(
        bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
        )
    )
    (path / "report.md").write_text("# Run report\n")
    (path / "optimizer.pt").write_bytes(b"not uploaded")  # training state: never staged
    corpus = {"text_files": ["/data/genesis.txt"], "dataset": None, "val_fraction": 0.1, "split": "chars"}
    (path / "train_args.json").write_text(json.dumps({"corpus": corpus, "block_size": 64, "batch_size": 8}))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("run") / "tiny-mla")


@pytest.fixture(scope="module")
def staged(run_dir, tmp_path_factory):
    """The dry-run folder, made through the command line."""
    out = tmp_path_factory.mktemp("staged") / "upload"
    with pytest.warns(UserWarning, match="left out of the upload"):  # the run folder holds a pickle
        push_main([str(run_dir), "--repo-id", REPO_ID, "--dry-run", str(out), "--card-datasets", "my/corpus"])
    return out


def test_dry_run_folder_and_card(run_dir, staged):
    assert {p.name for p in staged.iterdir()} == EXPECTED_FILES
    # the uploaded tokenizer knows the model's context, even from a run saved without it
    assert json.loads((run_dir / "tokenizer_config.json").read_text()).get("model_max_length", 1e30) > 256
    assert json.loads((staged / "tokenizer_config.json").read_text())["model_max_length"] == 256
    assert (staged / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    assert json.loads((staged / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_hf_attn.HfAttnForCausalLM"
    )

    card = ModelCard.load(staged / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0"
    assert data["datasets"] == ["my/corpus"]
    assert {"hf_attn", "mla", "custom_code"} <= set(data["tags"])

    config = HfAttnConfig.from_pretrained(run_dir)
    params = sum(p.numel() for p in HfAttnForCausalLM(config).parameters())
    text = card.text
    assert f"{params:,} (float32)" in text
    kv = config.kv_cache_elements_per_token  # (64 + 8) * 2 layers = 144 elements, 4 bytes each
    assert f"| KV cache per token | {kv:,} elements" in text and f"{kv * 4} B in float32" in text
    assert "**val_loss**: 2.2500" in text  # the last of 12 evaluations: 5.0 - 0.25 * 11
    assert text.count("\n| 1,200 |") == 1 and len([row for row in text.splitlines() if row.startswith("| ")]) >= 8
    assert "Local text files `genesis.txt`; validation: 10% by chars split. Trained on blocks of 64 tokens" in text
    assert "![Training and validation loss](loss.png)" in text
    assert f'AutoModelForCausalLM.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    assert f'pipeline("text-generation", model="{REPO_ID}", trust_remote_code=True)' in text


# Runs in a fresh interpreter where `import hf_attn` fails, so the code must come from the folder.
CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["hf_attn"] = None
    import json, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    ref = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(ref, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(ref)  # without trust_remote_code, as a plain user would
    ids = tok(sys.argv[2], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    gen = pipeline("text-generation", model=ref, trust_remote_code=True)
    out = gen(sys.argv[2], max_new_tokens=12, do_sample=False)[0]["generated_text"]
    result = {"module": type(model).__module__, "ids": ids.tolist(), "logits": logits.tolist(), "text": out}
    open(sys.argv[3], "w").write(json.dumps(result))
    """
)


def run_child(ref: str, cwd: Path, **env) -> dict:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    full_env.update(HF_HOME=str(cwd / "hf_home"), PYTHONPATH="", **env)
    # stdin closed: AutoTokenizer (no trust_remote_code) would otherwise ask about the config's
    # custom code on a terminal; at EOF it falls back to the plain config, which is all it needs.
    out = cwd / "child_result.json"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ref, PROMPT, str(out)],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def check_child_matches_local(result: dict, run_dir: Path):
    assert result["module"].startswith("transformers_modules."), result["module"]  # remote code, not hf_attn
    model = HfAttnForCausalLM.from_pretrained(run_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor(result["ids"])).logits
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, rtol=0, atol=0)
    from transformers import AutoTokenizer, pipeline

    gen = pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(run_dir))
    expected = gen(PROMPT, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert result["text"] == expected and len(result["text"]) > len(PROMPT)


def test_staged_folder_loads_without_hf_attn(run_dir, staged, tmp_path):
    check_child_matches_local(run_child(str(staged), tmp_path), run_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, server: subprocess.Popen, log: Path) -> bytes:
    """Poll `url` until it answers; fail with the server's log if the server exits.

    No deadline of its own: a loaded machine only makes the server slower, and a server that hangs is
    stopped by the suite's per-test timeout (pytest-timeout, pyproject.toml).
    """
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except OSError:
            assert server.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)


def stop(server: subprocess.Popen):
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def test_download_by_repo_id_over_http(run_dir, staged, tmp_path):
    """Serve the staged folder as a git repo through olah (a Hub mirror) on 127.0.0.1, download it
    with snapshot_download, then load it by repo id with HF_HUB_OFFLINE=1 (olah answers 401 for
    optional files that AutoTokenizer probes, so loading must come from the downloaded cache)."""
    pytest.importorskip("olah", reason="olah (a local Hub mirror) is not installed; see scripts/ci_setup.sh")
    repo = tmp_path / "mirror" / "models" / REPO_ID
    repo.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(staged), str(repo)], check=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "upload"], cwd=repo, check=True)

    port = free_port()
    (tmp_path / "olah.toml").write_text(
        textwrap.dedent(f"""
        [basic]
        host = "127.0.0.1"
        port = {port}
        mirrors-path = ["{tmp_path / "mirror"}"]
        repos-path = "{tmp_path / "olah_cache"}"
        [accessibility]
        offline = true
        [[accessibility.proxy]]
        repo = "*"
        allow = true
        [[accessibility.proxy]]
        repo = "*/*"
        allow = true
        """)
    )
    endpoint = f"http://127.0.0.1:{port}"
    with open(tmp_path / "olah.log", "w") as log:  # the server keeps its own copy of the file
        server = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "-c", "olah.toml", "--log-path", "logs"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        info = wait_for_http(f"{endpoint}/api/models/{REPO_ID}/revision/main", server, tmp_path / "olah.log")
        assert json.loads(info)["id"] == REPO_ID
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1")
        code = "import sys; from huggingface_hub import snapshot_download; print(snapshot_download(sys.argv[1]))"
        proc = subprocess.run(
            [sys.executable, "-c", code, REPO_ID], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        stop(server)
    snapshot = Path(proc.stdout.strip().splitlines()[-1])
    assert {p.name for p in snapshot.iterdir()} == EXPECTED_FILES
    assert (snapshot / "model.safetensors").read_bytes() == (staged / "model.safetensors").read_bytes()
    # The server is gone: this load can only use the cache, by repo id.
    check_child_matches_local(run_child(REPO_ID, tmp_path, HF_HUB_OFFLINE="1"), run_dir)


# ------------------------------------------------------------------ validation and error paths


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """No token anywhere, online mode, and an endpoint on a closed local port: nothing can reach the Hub."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")


def test_offline_mode_is_reported(run_dir, monkeypatch, no_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1"):
        push_to_hub(run_dir, REPO_ID, token="hf_fake")


def test_missing_token_says_how_to_log_in(run_dir, no_hub):
    with pytest.raises(HubError, match="No Hugging Face token.*hf auth login.*HF_TOKEN"):
        push_to_hub(run_dir, REPO_ID)


def test_unreachable_hub_is_reported(run_dir, no_hub):
    with pytest.raises(HubError, match="Cannot reach the Hub at http://127.0.0.1"):
        push_to_hub(run_dir, REPO_ID, token="hf_fake")


def test_someone_elses_namespace_is_refused(run_dir, monkeypatch, no_hub):
    monkeypatch.setattr(hub.HfApi, "whoami", lambda self, *a, **k: {"name": "bob", "orgs": [{"name": "bobs-lab"}]})
    with pytest.raises(HubError, match="belongs to 'bob'.*cannot write to 'alice'.*bob/NAME"):
        push_to_hub(run_dir, REPO_ID, token="hf_fake")


def test_forbidden_repo_is_reported(run_dir, monkeypatch, no_hub):
    import httpx2

    def forbidden(self, *a, **k):
        request = httpx2.Request("POST", f"{constants.ENDPOINT}/api/repos/create")
        raise HfHubHTTPError("403 Forbidden", response=httpx2.Response(403, request=request))

    monkeypatch.setattr(hub.HfApi, "whoami", lambda self, *a, **k: {"name": "alice", "orgs": []})
    monkeypatch.setattr(hub.HfApi, "create_repo", forbidden)
    with pytest.raises(HubError, match="may not write to 'alice/tiny-mla' \\(403\\)"):
        push_to_hub(run_dir, REPO_ID, token="hf_fake")


def test_upload_calls(run_dir, monkeypatch, no_hub):
    """The upload path with HfApi's network calls replaced: the staged folder goes to upload_folder."""
    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    monkeypatch.setattr(hub.HfApi, "whoami", lambda self, *a, **k: {"name": "bob", "orgs": [{"name": "alice"}]})

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, **kw):
        calls.append(("upload_folder", {p.name for p in Path(kw["folder_path"]).iterdir()}, kw["revision"]))

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "create_branch", lambda self, repo_id, **kw: calls.append(("branch", kw["branch"])))
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    url = push_to_hub(run_dir, REPO_ID, private=True, revision="v1")
    assert url == f"https://hub.example/{REPO_ID}/tree/v1"
    assert calls == [
        ("create_repo", REPO_ID, {"private": True, "exist_ok": True}, "hf_from_env"),
        ("branch", "v1"),
        ("upload_folder", EXPECTED_FILES, "v1"),
    ]


def test_invalid_folders_are_refused(run_dir, tmp_path):
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(run_dir), str(bad)], check=True)
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    with pytest.raises(HubError, match="pickle weights \\(optimizer.pt, pytorch_model.bin\\)"):
        push_to_hub(bad, REPO_ID, dry_run_dir=tmp_path / "out1")
    (bad / "pytorch_model.bin").rename(bad / "model.safetensors")
    (bad / "tokenizer.json").unlink()
    (bad / "tokenizer_config.json").unlink()
    with pytest.raises(HubError, match="has no tokenizer"):
        push_to_hub(bad, REPO_ID, dry_run_dir=tmp_path / "out2")
    with pytest.raises(HubError, match="does not exist"):
        push_to_hub(tmp_path / "nowhere", REPO_ID, dry_run_dir=tmp_path / "out3")
    with pytest.raises(HubError, match="USER/NAME"):
        push_to_hub(run_dir, "no-namespace", dry_run_dir=tmp_path / "out4")
    assert not any((tmp_path / f"out{i}").exists() for i in range(1, 5))


@pytest.mark.parametrize("attention_type, overrides", [("performer", {}), ("gqa", {"sliding_window": 32})])
def test_card_describes_bounded_caches(tmp_path, attention_type, overrides):
    config = HfAttnConfig.from_preset("tiny", attention_type=attention_type, **overrides)
    HfAttnForCausalLM(config).save_pretrained(tmp_path)
    text = hub.build_model_card(tmp_path, repo_id=REPO_ID).text
    if attention_type == "performer":
        state = 2 * 4 * (64 + 1) * 17  # layers x K/V heads x (features (4 d_h) + count row) x (head_dim + 1)
        assert f"| decode state (FAVOR+) | {state:,} elements" in text and "whatever the context length" in text
        assert "KV cache per token" not in text
    else:
        per_token = 2 * 2 * 16 * 2  # 2 x K/V heads x head_dim x layers
        assert "| sliding window | 32 tokens" in text
        # at the full 256-token context the cache holds the last 31 tokens, 4 bytes each
        assert f"| KV cache at full context | {hub.format_bytes(per_token * 31 * 4)} per sequence" in text
