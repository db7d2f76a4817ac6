"""The pieces of multi-process training that need no processes: the row split and loss weights
(against the loss over the whole batch), launch checks and the config field."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, LMBatch, token_cross_entropy
from lmlab.training.config import RunConfig, apply_overrides
from lmlab.training.distributed import Processes, labelled, launched_processes, local_rows, loss_weight

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def masked_batch() -> LMBatch:
    """Eight rows whose labelled positions differ in number from row to row (as under MLM)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (8, 6), generator=generator)
    labels = ids.clone()
    labels[torch.rand(8, 6, generator=generator) < torch.linspace(0.1, 0.9, 8)[:, None]] = IGNORE_INDEX
    return LMBatch(input_ids=ids, labels=labels, attention_mask=torch.ones(8, 6, dtype=torch.bool))


@pytest.mark.parametrize("world_size", [2, 4])
def test_weighted_losses_of_the_processes_average_to_the_loss_of_the_whole_batch(world_size):
    batch = masked_batch()
    logits = torch.randn(8, 6, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weighted = []
    for rank in range(world_size):
        processes = Processes("ddp", rank, world_size, rank)
        rows = local_rows(batch, processes)
        assert rows.input_ids.shape == (8 // world_size, 6) and rows.attention_mask.shape == rows.input_ids.shape
        start = rank * 8 // world_size
        local_logits = logits[start:start + 8 // world_size]
        weight = loss_weight(batch, rows, processes)
        weighted.append(token_cross_entropy(local_logits, labelled(rows) if weight == 0 else rows) * weight)
    # the loss over every labelled token of the batch at once, in float64
    whole = F.cross_entropy(logits.reshape(-1, 11), batch.labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close((sum(weighted) / world_size).double(), whole, atol=1e-6, rtol=0)


def test_rows_without_labels_give_a_zero_gradient_not_nan():
    batch = masked_batch()
    rows = local_rows(batch, Processes("ddp", 3, 4, 3))
    assert not (rows.labels != IGNORE_INDEX).any()  # the last rows of masked_batch keep no label
    logits = torch.randn(2, 6, 11, requires_grad=True)
    (token_cross_entropy(logits, labelled(rows)) * loss_weight(batch, rows, Processes("ddp", 3, 4, 3))).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_rows_of_the_processes_make_up_the_batch():
    batch = masked_batch()
    parts = [local_rows(batch, Processes("fsdp", rank, 2, rank)).labels for rank in range(2)]
    assert torch.equal(torch.cat(parts), batch.labels)


def test_distributed_training_needs_torchrun(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert launched_processes("none") == Processes()
    with pytest.raises(LmlabError, match="torchrun"):
        launched_processes("ddp")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LmlabError, match="train.distributed=ddp"):
        launched_processes("none")


def test_a_torchrun_process_knows_its_place(monkeypatch):
    for name, value in zip(TORCHRUN_VARIABLES, ("3", "4", "1", "127.0.0.1", "29500")):
        monkeypatch.setenv(name, value)
    assert launched_processes("fsdp") == Processes("fsdp", rank=3, world_size=4, local_rank=1)


def test_train_distributed_takes_only_its_modes():
    config = apply_overrides(RunConfig(), ["train.distributed=fsdp"])
    config.train.validate()
    with pytest.raises(LmlabError, match="train.distributed must be one of none, ddp, fsdp"):
        apply_overrides(RunConfig(), ["train.distributed=deepspeed"])
