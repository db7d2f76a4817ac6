"""AdamW with weight decay on weight matrices only, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmlab.training.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool) -> list[dict]:
    """Split parameters: matrices decay; norms and biases never; embeddings as configured.

    Embeddings are the tables of ``nn.Embedding`` modules and of any module whose class name
    ends in ``Embedding`` (learned positions are one too).
    """
    embedding_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.Embedding) or type(m).__name__.endswith("Embedding")
        for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for param in model.parameters():  # tied parameters appear once
        if not param.requires_grad:
            continue
        is_embedding = id(param) in embedding_params
        if param.dim() >= 2 and (decay_embeddings or not is_embedding):
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`; the fused kernel where the device supports it."""
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_embeddings)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def learning_rate(step: float, cfg: TrainConfig, time_fraction: float | None = None) -> float:
    """Linear warm-up over ``warmup_steps`` steps to ``lr``, then cosine decay to ``min_lr``.

    The decay ends at ``max_steps``; with a time budget, ``time_fraction`` (the share of
    ``max_time`` spent) ends it too, whichever comes first, so a time-limited run anneals fully.
    Warm-up always counts optimizer steps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    fraction = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if time_fraction is not None:
        fraction = max(fraction, time_fraction)
    if fraction >= 1:
        return cfg.min_lr
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * fraction)) * (cfg.lr - cfg.min_lr)
