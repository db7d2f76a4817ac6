"""Numbers about a built model: parameter counts, the state of its MoE layers, its token embedding table."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.layers.moe import MoEFeedForward


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """The model's Mixture-of-Experts layers, in order (empty for a dense model)."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``total`` parameters and ``active_per_token``: those one token uses (every dense weight plus
    the experts it is routed to: top-k for token choice, capacity_factor on average for expert
    choice). The two are equal for a dense model."""
    total = count_parameters(model)
    inactive = sum(layer.inactive_parameters() for layer in moe_layers(model))
    return {"total": total, "active_per_token": total - inactive}


def auxiliary_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the MoE layers' weighted auxiliary losses from the last forward (0.0 when dense);
    add it to the objective's loss."""
    return sum((layer.aux_loss for layer in moe_layers(model)), 0.0)


def expert_utilisation(model: nn.Module) -> dict[str, list]:
    """Per MoE layer, from the last forward: ``moe_load`` the share of computed (token, expert)
    pairs per expert (each row sums to 1), ``moe_dropped`` the share of tokens no expert
    processed. Empty for a dense model (for the training log)."""
    layers = moe_layers(model)
    if not layers:
        return {}
    return {
        "moe_load": [[round(x, 4) for x in layer.load.tolist()] for layer in layers],
        "moe_dropped": [round(layer.dropped, 4) for layer in layers],
    }


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The table that turns token ids into the model's input vectors (V, C): every lmlab model
    registers it before any other embedding (positions come after it; an encoder-decoder's
    encoder table comes first, and is the shared one when the stacks share embeddings)."""
    vocab = model.config.vocab_size
    table = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if table is None or table.num_embeddings != vocab:
        raise LmlabError(f"{type(model).__name__} has no token embedding table of {vocab} rows to show")
    return table
