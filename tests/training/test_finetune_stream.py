"""``lmlab seq2seq RUN --text T`` streams a prompt-format run's target piece by piece (the same text
as the batch path); an encoder-decoder run gives its target whole."""

from __future__ import annotations

import pytest
import torch

from finetune_fixtures import base_run, write_jsonl
from lmlab.cli import main
from lmlab.training.finetune import FinetuneConfig, finetune
from lmlab.training.finetuned import generate_targets, load_finetuned, stream_target

PAIRS = [{"source": s, "target": s[::-1]} for s in ("abc", "dog", "sun", "red", "hat", "mat", "big", "cat")]


@pytest.mark.parametrize("objective,extra", [("causal-lm", {"prompt_format": "{source}: "}), ("span-corruption", {})],
                         ids=["prompt-format", "encoder-decoder"])
def test_the_streamed_target_equals_the_generated_one(tmp_path, capsys, objective, extra):
    torch.set_num_threads(1)
    base = base_run(tmp_path, objective)
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 2)
    run = tmp_path / "run"
    finetune(FinetuneConfig(model=str(base), task="seq2seq", data=str(data), out=str(run), lr=3e-3, max_steps=3,
                            batch_size=4, max_new_tokens=8, **extra), progress=False)
    tuned = load_finetuned(run)
    pieces = list(stream_target(tuned, "abc"))
    whole = generate_targets(tuned, ["abc"])[0]
    assert "".join(pieces) == whole
    if objective == "causal-lm" and len(whole) > 1:
        assert len(pieces) > 1  # one character token at a time
    capsys.readouterr()
    assert main(["seq2seq", str(run), "--text", "abc"]) == 0
    assert capsys.readouterr().out == whole + "\n"
