"""``lmlab convert RUN --to hf`` on fine-tuned classifiers: *ForSequenceClassification with the
run's label names, and the same logits in transformers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent.parent / "interop"))

from finetune_fixtures import write_csv  # noqa: E402
from parity_helpers import TOL, write_tokenizer  # noqa: E402

from lmlab.cli import main  # noqa: E402
from lmlab.data.collate import pad_batch  # noqa: E402
from lmlab.training.finetuned import load_finetuned  # noqa: E402

VOCAB = 40
LABELS = ["neg", "neu", "pos"]


def _rows(count: int) -> list[tuple[str, str]]:
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(0, VOCAB - 4, (count, 5), generator=generator)
    return [(" ".join(f"w{int(w)}" for w in row), LABELS[i % 3]) for i, row in enumerate(words)]


def _base(directory: Path, family: str) -> Path:
    torch.manual_seed(0)
    if family == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=64)
        model = transformers.BertForMaskedLM(config)
    else:
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64)
        model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    write_tokenizer(directory, VOCAB)
    return directory


@pytest.mark.parametrize("family,flags", [("bert", ["--pooling", "cls"]), ("gpt2", [])], ids=["bert-cls", "gpt2"])
def test_a_finetuned_classifier_converts_to_sequence_classification(tmp_path, family, flags):
    torch.set_num_threads(1)
    base = _base(tmp_path / "base", family)
    rows = _rows(24)
    data = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    run = tmp_path / "run"
    assert main(["finetune", str(base), "--task", "classify", "--data", str(data), "--out", str(run), "--max-steps",
                 "2", "--lr", "1e-2", "--no-progress", *flags]) == 0
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert config["architectures"][0].endswith("ForSequenceClassification")

    tuned = load_finetuned(run)
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    batch = pad_batch([torch.tensor(tuned.codec.text(text)) for text, _ in rows[:4]], config.get("pad_token_id", 0))
    with torch.no_grad():
        ours = tuned.run.model.eval()(batch.input_ids, attention_mask=batch.attention_mask)  # (4, 3)
        theirs = reference(batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    assert (ours - theirs).abs().max().item() <= TOL


def test_a_mean_pooling_run_is_refused_in_one_line(tmp_path, capsys):
    base = _base(tmp_path / "base", "bert")
    data = write_csv(tmp_path / "train.csv", ["text", "label"], _rows(12))
    run = tmp_path / "run"
    assert main(["finetune", str(base), "--task", "classify", "--data", str(data), "--out", str(run), "--max-steps",
                 "1", "--no-progress", "--pooling", "mean"]) == 0
    capsys.readouterr()
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to", "hf"]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "pooling='mean' has no" in stderr
