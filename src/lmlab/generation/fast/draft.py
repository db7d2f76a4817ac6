"""The int8 draft of speculative decoding: the same decoder computing with int8 weights."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lmlab.generation.fast.head_screen import ScreenedHead
from lmlab.generation.fast.modules import NativeLinear, int8_weights
from lmlab.kernels import quantize_weight, skinny_linear_int8_float

Choose = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # logits (1, V), uniform (1, V) → token (1,)


def weight_versions(model: nn.Module) -> tuple:
    """Where each parameter's values live and how often they were changed in place."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class Int8Draft:
    """Int8 copies (per-row scales) of a decoding twin's native linear layers, and the head
    screen's int8 head. :meth:`propose` runs the twin with them through the native int8 kernel."""

    def __init__(self, twin: nn.Module, screen: ScreenedHead):
        head = twin.lm_head
        self.table = {m: quantize_weight(m.weight) for m in twin.modules() if isinstance(m, NativeLinear) and m is not head}
        self.head = (screen.qweight, screen.scale)
        self.versions = weight_versions(twin)

    def is_current(self, twin: nn.Module) -> bool:
        """True while no weight of ``twin`` moved or changed since the copies were made."""
        return self.versions == weight_versions(twin)

    def propose(self, session, token: torch.Tensor, k: int, choose: Choose, uniform: torch.Tensor | None) -> list[int]:
        """The draft's ``k`` tokens after ``token`` (1,), each picked by ``choose(logits (1, V),
        uniform (1, V) or None)`` with ``uniform[i]``, written into ``session``'s cache from its
        current position, which is left unchanged."""
        start, proposals = session.position, []
        with int8_weights(self.table):
            for i in range(k):
                hidden = session.model.hidden_states(token[:, None], session.cache, start + i)[:, -1]  # (1, C)
                logits = skinny_linear_int8_float(hidden, *self.head)  # (1, V)
                token = choose(logits, None if uniform is None else uniform[i : i + 1])  # (1,)
                proposals.append(int(token))
        return proposals
