"""Every pretraining objective trains its backbone end to end from the same run machinery."""

from __future__ import annotations

import pytest
import torch

from lmlab.cli import main
from lmlab.data.shards import prepare_shards
from lmlab.errors import LmlabError
from lmlab.tokenizers import CharTokenizer
from lmlab.training.config import RunConfig, apply_overrides
from lmlab.training.objective_registry import OBJECTIVES, sentinel_count
from lmlab.training.run import load_run, make_trainer

BACKBONE = {"causal-lm": "decoder", "prefix-lm": "decoder", "mlm": "encoder",
            "span-corruption": "encoder-decoder", "bart": "encoder-decoder", "ul2": "encoder-decoder"}
TEXT = "".join(f"The {w} sat on the mat. A {w} ran! Did the {w} stop? " for w in ("cat", "dog", "fox", "owl") * 60)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def tiny_config(corpus, objective: str, **overrides: str) -> RunConfig:
    config = RunConfig()
    settings = {
        "data.corpus": str(corpus), "train.objective": objective, "model.backbone": BACKBONE[objective],
        "model.n_layer": 2, "model.n_head": 2, "model.d_model": 32, "model.context_length": 32,
        "model.dropout": 0.0, "train.batch_size": 8, "train.lr": 3e-3, "train.warmup_steps": 5,
        "train.max_steps": 60, "train.eval_every": 1000, "train.eval_batches": 4,
        "train.checkpoint_every": 1000, "train.sample_chars": 0, **overrides,
    }
    return apply_overrides(config, [f"{k}={v}" for k, v in settings.items()])


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_each_objective_pretrains_its_backbone_with_falling_loss(tmp_path, corpus, objective):
    torch.set_num_threads(1)
    trainer, tokenizer = make_trainer(tiny_config(corpus, objective), tmp_path / "run", progress=False)
    before = trainer.task.evaluate(trainer.model, 4, seed=0)["loss"]
    result = trainer.fit()
    after = trainer.task.evaluate(trainer.model, 4, seed=0)["loss"]
    assert after < before - 0.3, (objective, before, after)
    assert result.stop_reason == "max_steps"


def test_the_char_vocabulary_gets_the_special_tokens_of_the_objective(tmp_path, corpus):
    _, tokenizer = make_trainer(tiny_config(corpus, "ul2"), tmp_path / "run", progress=False)
    assert {"pad", "eos"} <= set(tokenizer.special_tokens)
    assert tokenizer.token_to_id("[NLG]") is not None
    assert tokenizer.token_to_id(f"<extra_id_{sentinel_count(32) - 1}>") is not None
    plain = set(tokenizer.encode(TEXT))
    assert plain.isdisjoint(tokenizer.special_tokens.values())  # plain text never yields them


@pytest.mark.parametrize("objective,backbone", [("mlm", "decoder"), ("span-corruption", "encoder"), ("causal-lm", "encoder")])
def test_a_backbone_that_does_not_match_the_objective_is_a_clear_error(tmp_path, corpus, objective, backbone):
    config = tiny_config(corpus, objective, **{"model.backbone": backbone})
    with pytest.raises(LmlabError, match=f"model.backbone={BACKBONE[objective]}"):
        make_trainer(config, tmp_path / "run", progress=False)


def test_a_tokenizer_without_the_needed_special_tokens_is_a_clear_error(tmp_path, corpus):
    config = tiny_config(corpus, "mlm", **{"data.tokenizer": "chess-pgn"})
    with pytest.raises(LmlabError, match="mask"):
        make_trainer(config, tmp_path / "run", progress=False)


def test_training_reads_memory_mapped_shards_and_splits_them_by_tokens(tmp_path, corpus):
    tokenizer = CharTokenizer.from_text(TEXT)
    prepare_shards(tokenizer, str(corpus), tmp_path / "shards", shard_tokens=5000, doc_separator=None)
    config = tiny_config(tmp_path / "shards", "causal-lm")
    trainer, used = make_trainer(config, tmp_path / "run", progress=False)
    assert used.to_dict() == tokenizer.to_dict()
    total = len(trainer.task.train_tokens) + len(trainer.task.val_tokens)
    assert len(trainer.task.val_tokens) == round(total * 0.1)
    before = trainer.task.evaluate(trainer.model, 4, seed=0)["loss"]
    trainer.fit()
    assert trainer.task.evaluate(trainer.model, 4, seed=0)["loss"] < before - 0.5


def test_cli_objective_flag_trains_and_eval_reports_the_objective_metrics(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(corpus), "--out", str(out), "--objective", "span-corruption",
            "--max-steps", "5", "--no-progress", "--set", "model.backbone=encoder-decoder",
            "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context_length=32"]
    assert main(args) == 0
    assert "--- sample ---" not in capsys.readouterr().out
    assert load_run(out).config.train.objective == "span-corruption"
    assert main(["eval", str(out)]) == 0
    assert '"loss"' in capsys.readouterr().out
