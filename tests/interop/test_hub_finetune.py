"""``lmlab finetune`` (and the task commands) take a Hugging Face Hub model id, from a pre-populated
offline cache; an id missing from it is one line, exit 2, and writes nothing."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")

from test_hub_models import cached_gpt2, hub_cache  # noqa: E402,F401  (fixtures)

from lmlab.cli import main  # noqa: E402
from lmlab.training.run import load_run  # noqa: E402


@pytest.fixture
def documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(f"w{(i + k) % 30}" for k in range(12))}) + "\n"
                            for i in range(12)))
    return path


def test_finetune_takes_a_cached_hub_id(cached_gpt2, documents, tmp_path, capsys):
    repo_id, _ = cached_gpt2
    out = tmp_path / "run"
    assert main(["finetune", repo_id, "--task", "causal-lm", "--data", str(documents), "--out", str(out),
                 "--max-steps", "2", "--batch-size", "2", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["frozen_parameters"] == 0
    assert main(["generate", str(out), "--prompt", "w1 w2", "--max-new-tokens", "2"]) == 0


def test_a_lora_run_of_a_hub_model_exports_merged(cached_gpt2, documents, tmp_path, capsys):
    repo_id, _ = cached_gpt2
    out = tmp_path / "run"
    assert main(["finetune", repo_id, "--task", "causal-lm", "--data", str(documents), "--out", str(out),
                 "--max-steps", "3", "--batch-size", "2", "--lr", "1e-2", "--lora-rank", "2",
                 "--lora-targets", "q,v,ffn", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["frozen_parameters"] > 0
    assert main(["convert", str(out), str(tmp_path / "exported"), "--to", "hf"]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, load_run(out).model(ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("command", [["finetune", "org/not-cached", "--task", "causal-lm", "--data", "{docs}",
                                      "--out", "{out}", "--no-progress"],
                                     ["classify", "org/not-cached", "--text", "w1"],
                                     ["seq2seq", "org/not-cached", "--text", "w1"]], ids=lambda c: c[0])
def test_an_id_missing_from_the_offline_cache_is_one_line_exit_2(hub_cache, documents, tmp_path, capsys, command):
    argv = [arg.replace("{docs}", str(documents)).replace("{out}", str(tmp_path / "run")) for arg in command]
    assert main(argv) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "'org/not-cached' is not a local path" in stderr, stderr
    assert not (tmp_path / "run").exists()
