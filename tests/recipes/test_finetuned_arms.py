"""What the task recipes share: seeded disjoint splits, step-0 runs that load like trained ones,
and reproduce commands that ``lmlab finetune``'s own parser turns back into the same settings."""

from __future__ import annotations

import shlex

import pytest
import torch

from lmlab.cli import build_parser
from lmlab.cli.finetune import SETTING_FLAGS
from lmlab.errors import LmlabError
from lmlab.models import ModelConfig
from lmlab.recipes.finetuned_arms import finetune_command, initial_run, three_way_split
from lmlab.tokenizers import CharTokenizer
from lmlab.training.finetune import FinetuneConfig
from lmlab.training.run import load_run


def test_three_way_split_is_seeded_disjoint_and_capped():
    splits = three_way_split(100, test_size=30, val_size=10, train_size=50, seed=3, what="data")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 20)  # test capped at a fifth
    assert not set(splits.train) & set(splits.val) and not set(splits.train + splits.val) & set(splits.test)
    assert splits == three_way_split(100, 30, 10, 50, seed=3, what="data")
    assert splits != three_way_split(100, 30, 10, 50, seed=4, what="data")
    with pytest.raises(LmlabError, match="data: 4 examples left, too few"):
        three_way_split(4, 1, 1, 10, seed=0, what="data")


def test_an_initial_run_loads_with_its_seeded_weights_and_tokenizer(tmp_path):
    tokenizer = CharTokenizer.from_text("abc d", special_tokens={"pad": "<pad>", "eos": "<eos>"})
    config = ModelConfig(arch="gru", backbone="encoder-decoder", n_layer=1, d_model=8, rnn_hidden=8)
    first = load_run(initial_run(tmp_path / "a", config, tokenizer, seed=1), echo=lambda _: None)
    again = load_run(initial_run(tmp_path / "b", config, tokenizer, seed=1), echo=lambda _: None)
    assert first.tokenizer.encode("cab") == tokenizer.encode("cab")
    assert first.config.model.vocab_size == tokenizer.vocab_size
    for (name, weight), (_, same) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        torch.testing.assert_close(weight, same, msg=name)


def test_the_finetune_command_parses_back_to_the_same_settings():
    config = FinetuneConfig(model="OUT/init/gru", task="seq2seq", data="OUT/splits/train.jsonl",
                            val="OUT/splits/val.jsonl", out="OUT/arms/my arm", max_time=4.5, batch_size=32,
                            lr=0.003, seed=7, max_new_tokens=12, truncate=False)
    words = shlex.split(finetune_command(config))
    assert words[:2] == ["lmlab", "finetune"]
    args = build_parser().parse_args(words[1:])
    given = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}
    parsed = FinetuneConfig(model=args.model, task=args.task, data=args.data, out=args.out,
                            truncate=not args.no_truncate, **given)
    assert parsed == config
