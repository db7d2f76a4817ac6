"""Freezing parts of a model for fine-tuning: the embeddings, the encoder, or all but the head.

Parts are found by the models' attribute names: ``tok_emb`` / ``pos_emb`` (``embedding`` in the
GRU baselines) for embeddings; ``backbone`` (encoder-only models) or ``encoder``
(encoder-decoders) for the encoder; ``lm_head`` / ``mlm_head`` / ``classifier`` / ``head`` for
the head. A parameter the head shares (a head tied to the token embedding) stays trainable under
``all-but-head``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.interface import DECODER, ENCODER, ENCODER_DECODER

EMBEDDING_NAMES = ("tok_emb", "pos_emb", "embedding")
HEAD_NAMES = ("lm_head", "mlm_head", "classifier", "head")


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The token and position embeddings of every stack (a T5 relative bias counts as one)."""
    modules = [m for name, m in model.named_modules() if name.rpartition(".")[2] in EMBEDDING_NAMES]
    return [p for module in modules for p in module.parameters()]


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The encoder stack: the whole backbone of an encoder, the ``encoder`` of an encoder-decoder."""
    structure = model.structure
    if structure == ENCODER:
        return list(model.backbone.parameters())
    if structure == ENCODER_DECODER:
        return list(model.encoder.parameters())
    kind = "decoder-only model" if structure == DECODER else type(model).__name__
    raise LmlabError(f"a {kind} has no encoder to freeze; choose --freeze embeddings or all-but-head")


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The model's output heads (``lm_head``, ``mlm_head``, ``classifier``, ``head``)."""
    return [getattr(model, name) for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)]


def all_but_head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter the output head does not use."""
    heads = head_modules(model)
    if not heads:
        raise LmlabError(f"{type(model).__name__} has no head ({', '.join(HEAD_NAMES)}); choose --freeze embeddings or encoder")
    head_ids = {id(p) for head in heads for p in head.parameters()}
    return [p for p in model.parameters() if id(p) not in head_ids]


FREEZABLE: dict[str, Callable[[nn.Module], list[nn.Parameter]]] = {
    "embeddings": embedding_parameters,
    "encoder": encoder_parameters,
    "all-but-head": all_but_head_parameters,
}


def freeze(model: nn.Module, what: str) -> int:
    """Stop gradients to the part ``what`` names (embeddings, encoder, all-but-head), in place.

    Returns the number of parameter values (elements, each shared tensor once) in that part.
    """
    if what not in FREEZABLE:
        raise LmlabError(f"cannot freeze {what!r}; choose one of {', '.join(FREEZABLE)}")
    unique = {id(p): p for p in FREEZABLE[what](model)}
    for parameter in unique.values():
        parameter.requires_grad_(False)
    return sum(p.numel() for p in unique.values())
