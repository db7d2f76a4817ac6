"""What the trainer trains on: a task makes batches, computes the loss and evaluates.

The trainer only knows this small interface, so new objectives (MLM, span corruption, ...)
plug in as new tasks without touching the loop.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from lmlab.data.windows import check_enough_tokens, random_windows
from lmlab.evaluation import evaluate_lm
from lmlab.models import auxiliary_loss
from lmlab.objectives import LMBatch, causal_lm_batch, causal_lm_loss


class TrainingTask(Protocol):
    """A source of batches plus the loss and evaluation that go with them."""

    tokens_per_batch: int

    def train_batch(self, generator: torch.Generator) -> LMBatch: ...

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]: ...


class CausalLMTask:
    """Next-token prediction on random windows of a tokenised corpus."""

    def __init__(self, train_tokens: torch.Tensor, val_tokens: torch.Tensor, batch_size: int, context_length: int):
        check_enough_tokens(train_tokens, context_length, "training")
        check_enough_tokens(val_tokens, context_length, "validation")
        self.train_tokens = train_tokens
        self.val_tokens = val_tokens
        self.batch_size = batch_size
        self.context_length = context_length
        self.tokens_per_batch = batch_size * context_length

    def train_batch(self, generator: torch.Generator) -> LMBatch:
        windows = random_windows(self.train_tokens, self.batch_size, self.context_length, generator)
        return causal_lm_batch(windows)  # (B, T) inputs and labels

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor:
        """Next-token cross-entropy plus the model's MoE auxiliary losses (none when dense)."""
        return causal_lm_loss(model(batch.input_ids), batch) + auxiliary_loss(model)

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]:
        """Validation metrics on ``num_batches`` random windows, the same ones at every call."""
        generator = torch.Generator().manual_seed(seed)
        windows = (
            random_windows(self.val_tokens, self.batch_size, self.context_length, generator)
            for _ in range(num_batches)
        )
        return evaluate_lm(model, windows)
