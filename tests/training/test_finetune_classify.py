"""Fine-tuning a classifier: an encoder and a decoder learn synthetic data, and the first 20 losses
equal a plain transformers loop's from the same BERT weights, data order and optimizer settings."""

from __future__ import annotations

import json

import pytest
import torch

from finetune_fixtures import base_run, keyword_texts, write_csv
from lmlab.models import DecoderClassifier
from lmlab.training.finetune import FinetuneConfig, finetune
from lmlab.training.run import load_run
from lmlab.training.task_data import BatchSize, EpochPlan

WORDS = ["cat", "dog", "red", "big", "mat", "hat", "sun"]


def test_a_classifier_learns_a_keyword_rule_to_95_percent(tmp_path):
    torch.set_num_threads(1)
    base = base_run(tmp_path, "mlm")
    train = write_csv(tmp_path / "train.csv", ["text", "label"], keyword_texts(400, seed=0))
    val = write_csv(tmp_path / "val.csv", ["text", "label"], keyword_texts(100, seed=1))
    result = finetune(FinetuneConfig(model=str(base), task="classify", data=str(train), val=str(val),
                                     out=str(tmp_path / "run"), lr=3e-3, epochs=3, batch_size=16), progress=False)
    assert result.last_eval["accuracy"] >= 0.95
    best = load_run(result.best)
    assert best.state["finetune"]["label_names"] == ["no", "yes"]
    assert best.config.model.num_labels == 2 and best.config.model.head == "classifier"


def _tiny_bert(directory, transformers):
    directory.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def _transformers_losses(model, tokenizer, rows, order, lr):
    """A plain loop: AdamW, constant lr, no clipping, no weight decay, the given batches. lmlab
    encoders have no token types (type 0's vector is folded into the positions), so the reference
    keeps its token-type table fixed."""
    model.train()
    model.bert.embeddings.token_type_embeddings.weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    losses = []
    for batch in order:
        encoded = tokenizer([rows[i][0] for i in batch], padding=True, return_tensors="pt")
        labels = torch.tensor([["no", "yes"].index(rows[i][1]) for i in batch])
        loss = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_first_20_losses_equal_a_transformers_loop(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    reference, tokenizer = _tiny_bert(tmp_path / "bert", transformers)
    rows = keyword_texts(100, seed=0)
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    val = write_csv(tmp_path / "val.csv", ["text", "label"], keyword_texts(16, seed=1))
    config = FinetuneConfig(model=str(tmp_path / "bert"), task="classify", data=str(train), val=str(val),
                            out=str(tmp_path / "run"), lr=1e-3, max_steps=20, batch_size=8, grad_clip=0.0,
                            seed=3, eval_every=10)
    finetune(config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ours = [r["loss"] for r in records if r["kind"] == "train"]

    lengths = [len(tokenizer(text)["input_ids"]) for text, _ in rows]
    plan = EpochPlan(lengths, BatchSize(examples=8), seed=3)
    theirs = _transformers_losses(reference, tokenizer, rows, [plan.batch(i) for i in range(20)], lr=1e-3)
    assert len(ours) == 20
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert max(theirs) - min(theirs) > 0.01  # the weights move: the comparison is not of constants


def test_a_decoder_classifier_learns_a_keyword_rule_to_95_percent(tmp_path):
    torch.set_num_threads(1)
    base = base_run(tmp_path, "causal-lm")
    train = write_csv(tmp_path / "train.csv", ["text", "label"], keyword_texts(400, seed=0))
    val = write_csv(tmp_path / "val.csv", ["text", "label"], keyword_texts(100, seed=1))
    result = finetune(FinetuneConfig(model=str(base), task="classify", data=str(train), val=str(val),
                                     out=str(tmp_path / "run"), lr=3e-3, epochs=3, batch_size=16), progress=False)
    assert result.last_eval["accuracy"] >= 0.95
    best = load_run(result.best)
    assert isinstance(best.model, DecoderClassifier) and best.state["finetune"]["label_names"] == ["no", "yes"]


def test_a_bert_checkpoints_pooler_seeds_the_classifier(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    reference, tokenizer = _tiny_bert(tmp_path / "cls", transformers)
    reference.bert.save_pretrained(tmp_path / "bert")  # a bare BertModel: encoder + pooler, no head
    tokenizer.save_pretrained(tmp_path / "bert")
    train = write_csv(tmp_path / "train.csv", ["text", "label"], keyword_texts(16, seed=0))
    finetune(FinetuneConfig(model=str(tmp_path / "bert"), task="classify", data=str(train), val=str(train),
                            out=str(tmp_path / "run"), lr=1e-9, max_steps=1, batch_size=8, pooling="cls"), progress=False)
    tuned = load_run(tmp_path / "run").model
    pooler = load_file(tmp_path / "bert" / "model.safetensors")
    torch.testing.assert_close(tuned.classifier.pooler[0].weight, pooler["pooler.dense.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(tuned.classifier.pooler[0].bias, pooler["pooler.dense.bias"], atol=1e-6, rtol=0)
