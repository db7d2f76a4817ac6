"""The linear layer every Transformer projection uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.kernels import skinny_linear


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) whose inference on a few float32
    CPU rows — one decoding step — runs the native :func:`~lmlab.kernels.skinny_linear` kernel
    when it is available; everything else (training, long inputs, other dtypes, GPUs) is
    ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) → (..., out_features)."""
        y = skinny_linear(x, self.weight, self.bias)
        return y if y is not None else F.linear(x, self.weight, self.bias)
