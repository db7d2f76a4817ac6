"""``--task chat``: conversations rendered with the chat template, the loss on the assistant's
tokens only; a tuned tiny model learns its replies and ``lmlab chat RUN`` answers with them."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from finetune_fixtures import base_run, write_jsonl  # noqa: E402
from lmlab.cli import main  # noqa: E402
from lmlab.objectives import IGNORE_INDEX  # noqa: E402
from lmlab.tokenizers import load_pretrained_tokenizer  # noqa: E402
from lmlab.training.finetune import FinetuneConfig, finetune  # noqa: E402
from lmlab.training.finetune_tasks import ChatTask  # noqa: E402
from lmlab.training.task_data import BatchSize, EpochPlan, Truncation, chat_examples  # noqa: E402

SPECIALS = ["</s>", "<s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = SPECIALS + [f"w{i}" for i in range(25)]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {{ eos_token }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")
REPLY = "w5 w6 w7"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny random GPT-2 directory whose word-level tokenizer has a chat template (turns end with </s>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.set_num_threads(1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("chat-model")
    config = transformers.GPT2Config(vocab_size=len(WORDS), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=1, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": TEMPLATE, "eos_token": "</s>", "bos_token": "<s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    return folder


def conversations(count: int, seed: int) -> list[dict]:
    """User turns of random words, every assistant reply REPLY (after a system turn, sometimes)."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        user = " ".join(f"w{rng.randrange(8, 25)}" for _ in range(rng.randint(1, 4)))
        messages = [{"role": "system", "content": "w1"}] if index % 3 == 0 else []
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": REPLY}]
        records.append({"messages": messages})
    return records


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chat-data")
    return write_jsonl(directory / "train.jsonl", conversations(48, 0)), write_jsonl(directory / "val.jsonl", conversations(8, 1))


def test_the_task_batches_label_only_the_assistant_tokens(chat_model):
    tokenizer = load_pretrained_tokenizer(chat_model)
    talk = [{"role": "user", "content": "w9 w10"}, {"role": "assistant", "content": "w5 w6"},
            {"role": "user", "content": "w11"}, {"role": "assistant", "content": "w7"}]
    examples = chat_examples(tokenizer, [talk, talk[:2]], Truncation(64), "conversation")
    task = ChatTask(EpochPlan([len(ids) for ids, _ in examples], BatchSize(examples=2), 0), examples, examples, 2)
    batch = task.collate([0, 1], train=True)
    rendered = "<|user|> w9 w10 </s> <|assistant|> w5 w6 </s> <|user|> w11 </s> <|assistant|> w7 </s>"
    assert tokenizer.decode(examples[0][0]) == rendered
    for row, expected in ((0, "w5 w6 </s> w7 </s>"), (1, "w5 w6 </s>")):
        labelled = batch.labels[row] != IGNORE_INDEX
        assert tokenizer.decode(batch.labels[row][labelled].tolist()) == expected
        inputs = torch.tensor(examples[row][0][:-1])
        assert torch.equal(batch.input_ids[row, : len(inputs)], inputs)  # position t predicts token t + 1
    assert (batch.labels[1, len(examples[1][0]) - 1:] == IGNORE_INDEX).all()  # padding is ignored


def test_a_tuned_model_lowers_its_loss_and_chat_answers_with_the_learned_reply(tmp_path, chat_model, chat_data,
                                                                               monkeypatch, capsys):
    run = tmp_path / "run"
    result = finetune(FinetuneConfig(model=str(chat_model), task="chat", data=str(chat_data[0]), val=str(chat_data[1]),
                                     out=str(run), lr=1e-2, batch_size=8, epochs=8, eval_every=8), progress=False)
    losses = [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"eval"' in line]
    assert result.step == 48 and losses[-1] < 0.5 * losses[0]
    monkeypatch.setattr("sys.stdin", io.StringIO("w20 w21\nw9\n"))
    assert main(["chat", str(run), "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == f"{REPLY}\n{REPLY}\n"
    assert main(["eval", str(run), "--data", str(chat_data[1])]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(losses[-1], rel=1e-4)


def _finetune_chat(model, data, out, *flags) -> list[str]:
    return ["finetune", str(model), "--task", "chat", "--data", str(data), "--out", str(out), "--no-progress", *flags]


def test_messages_without_roles_are_one_line_exit_2(tmp_path, chat_model, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"content": "w1"}, {"role": "assistant", "content": "w2"}]}])
    assert main(_finetune_chat(chat_model, data, tmp_path / "run")) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "line 1: message 0 has no 'role'" in stderr, stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_messages_field_lists_the_fields(tmp_path, chat_model, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"conversation": []}])
    assert main(_finetune_chat(chat_model, data, tmp_path / "run")) == 2
    assert "no field 'messages' (available: 'conversation'); pass --messages-column" in capsys.readouterr().err


def test_a_tokenizer_without_a_chat_template_is_one_line(tmp_path, chat_data, capsys):
    decoder = base_run(tmp_path, "causal-lm")
    capsys.readouterr()
    assert main(_finetune_chat(decoder, chat_data[0], tmp_path / "run")) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "has no chat template" in stderr, stderr
