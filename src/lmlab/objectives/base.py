"""What every objective produces: a batch of model inputs with aligned labels and masks."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value that contributes nothing to the loss


@dataclass
class LMBatch:
    """Inputs, labels and masks for one training step.

    ``labels`` are aligned with the logits the model produces (position t's label is the token
    position t must predict), so an objective's loss never shifts anything.
    """

    input_ids: torch.Tensor  # (B, T) token ids fed to the (encoder or decoder) model
    labels: torch.Tensor  # (B, T_out) target ids, IGNORE_INDEX where no loss is taken
    attention_mask: torch.Tensor | None = None  # (B, T) True for real tokens, False for padding
    decoder_input_ids: torch.Tensor | None = None  # (B, T_out) for encoder-decoder models
    decoder_attention_mask: torch.Tensor | None = None  # (B, T_out)
    prefix_lengths: torch.Tensor | None = None  # (B,) bidirectional prefix length (prefix LM)

    def to(self, device: torch.device | str) -> "LMBatch":
        """The same batch with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return replace(self, **moved)


def token_cross_entropy(logits: torch.Tensor, batch: LMBatch) -> torch.Tensor:
    """Every objective's loss: mean cross-entropy of ``logits`` against ``batch.labels``, skipping
    positions whose label is IGNORE_INDEX.

    logits: (B, T, V) from the model fed the batch; batch.labels: (B, T).
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), batch.labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
