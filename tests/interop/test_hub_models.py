"""Hub model ids wherever a model or tokenizer path is taken (issue 12, item 18), from a
pre-populated offline huggingface_hub cache: never the network."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from parity_helpers import write_tokenizer  # noqa: E402

from lmlab.cli import main  # noqa: E402
from lmlab.errors import LmlabError  # noqa: E402
from lmlab.interop.hub import resolve_model_path, resolve_tokenizer  # noqa: E402
from lmlab.training.run import load_run  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
VOCAB = 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache, with the Hub offline."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cached_snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot directory of ``repo_id`` in the cache layout huggingface_hub reads."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def cached_gpt2(hub_cache) -> tuple[str, transformers.GPT2LMHeadModel]:
    """A tiny random GPT-2 with its tokenizer, cached as the Hub model ``org/tiny-gpt2``."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    snapshot = cached_snapshot(hub_cache, "org/tiny-gpt2")
    model.save_pretrained(snapshot)
    write_tokenizer(snapshot, VOCAB)
    return "org/tiny-gpt2", model


def test_local_paths_and_non_ids_are_returned_unchanged(tmp_path, hub_cache):
    assert resolve_model_path(tmp_path) == tmp_path
    assert resolve_model_path(str(tmp_path / "absent")) == tmp_path / "absent"
    assert resolve_tokenizer("chess-pgn").kind == "chess-pgn"


def test_a_cached_hub_model_loads_offline(cached_gpt2):
    repo_id, reference = cached_gpt2
    run = load_run(repo_id)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = reference(ids).logits
        ours = run.model(ids)
    assert (ours - expected).abs().max() <= 1e-4
    assert resolve_tokenizer(repo_id).encode("w1 w2") == [5, 6]


def test_generate_and_tokenizer_commands_take_a_hub_id(cached_gpt2, capsys, monkeypatch):
    repo_id, _ = cached_gpt2
    assert main(["generate", repo_id, "--prompt", "w1 w2", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("w1 w2")
    monkeypatch.setattr("sys.stdin", io.StringIO("w3 w4\n"))
    assert main(["tokenizer", "encode", "--tokenizer", repo_id]) == 0
    assert capsys.readouterr().out.split() == ["7", "8"]


def test_convert_takes_a_hub_id(cached_gpt2, tmp_path, capsys):
    repo_id, _ = cached_gpt2
    assert main(["convert", repo_id, str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "gpt2"
    assert load_run(tmp_path / "run").tokenizer.encode("w1") == [5]


def test_an_id_missing_from_the_offline_cache_is_one_line(hub_cache, capsys):
    with pytest.raises(LmlabError, match="Hugging Face Hub could not be reached.*pass a local model directory"):
        resolve_model_path("org/not-cached")
    assert main(["generate", "org/not-cached", "--prompt", "hi"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'org/not-cached' is not a local path" in error
    assert main(["tokenizer", "encode", "--tokenizer", "org/not-cached"]) == 2
