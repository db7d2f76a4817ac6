"""AdamW with weight decay on weight matrices only, and the warm-up + cosine schedule."""

from __future__ import annotations

import math
from typing import Any

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
    """AdamW over :func:`parameter_groups` of the model's parameters where they are now; the fused
    kernel where their device has one (CPU and CUDA do), else the multi-tensor one."""
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_embeddings)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except RuntimeError:  # "fused=True requires ... supported devices"
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True)


# A time-limited run turns its budget into a step horizon once it has run this many steps; the
# session's first steps (allocation, caches warming up) are not measured unless nothing else is.
HORIZON_AT_STEP = 10
UNMEASURED_FIRST_STEPS = 2
HORIZON_KEY = "schedule_horizon"  # state.json: {"steps": the horizon or null, "max_time": the budget it is for}


def learning_rate(step: float, cfg: TrainConfig, horizon: int | None = None) -> float:
    """Linear warm-up over ``warmup_steps`` steps to ``lr``, then cosine decay to ``min_lr``.

    The decay ends at ``max_steps``, or at ``horizon`` when that comes first: the step a
    time-limited run expects to reach within ``max_time`` (:func:`time_horizon`), so it anneals
    fully while its learning rate stays a function of the step. Warm-up always counts steps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    end = cfg.max_steps if horizon is None else min(horizon, cfg.max_steps)
    fraction = (step - cfg.warmup_steps) / max(1, end - cfg.warmup_steps)
    if fraction >= 1:
        return cfg.min_lr
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * fraction)) * (cfg.lr - cfg.min_lr)


def time_horizon(step: int, elapsed: float, step_seconds: list[float], cfg: TrainConfig) -> int:
    """The step a run at ``step``, ``elapsed`` seconds into ``max_time``, reaches when the time
    left is spent at the pace of ``step_seconds`` (this session's steps, its first few left out
    when there are more); at most ``max_steps``, at least ``step``."""
    measured = step_seconds[UNMEASURED_FIRST_STEPS:] or step_seconds
    per_step = sum(measured) / len(measured)
    remaining = max(0.0, cfg.max_time - elapsed)
    return min(cfg.max_steps, step + math.floor(remaining / max(per_step, 1e-9)))


def recorded_horizon(state: dict[str, Any], max_time: float | None) -> int | None:
    """The schedule horizon a checkpoint's state records, if it was fixed for this ``max_time``
    (a resume with another budget measures a new one)."""
    recorded = state.get(HORIZON_KEY)
    if not isinstance(recorded, dict) or recorded.get("max_time") != max_time:
        return None
    steps = recorded.get("steps")
    return steps if isinstance(steps, int) else None
