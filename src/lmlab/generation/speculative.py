"""Speculative greedy decoding with an int8 draft of the model itself.

At batch 1 a decoding step costs one pass over the weights, however few rows it computes, and the
native kernel makes that true up to 8 rows. So an int8 copy of the same model (a quarter of the
bytes, see :class:`Int8Draft`) proposes ``k`` tokens one by one, then the float32 model checks all
of them in one step of ``k + 1`` rows: the proposals it agrees with are kept, and its own choice
follows the first disagreement. Every token is the float32 model's greedy choice, so the output is
greedy decoding's; only the number of passes over the float32 weights drops (an int8 draft of
GPT-2 agrees with it about 95% of the time).

The draft writes its guesses into the same KV cache; the check overwrites those positions with
the float32 keys and values, and the cache position is rewound past the rejected ones.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from lmlab.kernels import quantize_weight, skinny_linear_int8_float
from lmlab.layers.linear import Linear, quantized_weights


def _weight_versions(model: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class Int8Draft:
    """Int8 copies (per-row scales) of a decoder's :class:`~lmlab.layers.linear.Linear` layers and
    LM head. ``propose`` runs the same backbone with them through the native int8 kernel."""

    def __init__(self, model: nn.Module):
        self.table = {m: quantize_weight(m.weight) for m in model.backbone.modules() if isinstance(m, Linear)}
        self.head = quantize_weight(model.lm_head.weight)
        self.versions = _weight_versions(model)

    def propose(self, session, token: torch.Tensor, k: int) -> list[int]:
        """The draft's ``k`` greedy tokens after ``token`` (1,), written into ``session``'s cache
        from its current position, which is left unchanged."""
        start, proposals = session.position, []
        with quantized_weights(self.table):
            for i in range(k):
                hidden = session.model.backbone(token[:, None], session.cache, start + i)[:, -1]  # (1, C)
                token = skinny_linear_int8_float(hidden, *self.head).argmax(dim=-1)  # (1,)
                proposals.append(int(token))
        return proposals


def int8_draft(model: nn.Module) -> Int8Draft:
    """The model's cached :class:`Int8Draft`, rebuilt when any weight changed."""
    draft = model.__dict__.get("_int8_draft")
    if draft is None or draft.versions != _weight_versions(model):
        draft = Int8Draft(model)
        model.__dict__["_int8_draft"] = draft
    return draft


def can_speculate(session, config) -> bool:
    """Whether ``session`` can decode ``config`` speculatively: greedy decoding of one unpadded
    sequence whose step runs the int8 screen (float32 CPU weights, the native kernel)."""
    return (
        config.strategy == "greedy" and config.draft_tokens > 0 and config.decisive_logits() == 1
        and getattr(session, "screen", None) is not None and session.rows == 1 and session.mask is None
    )


def speculative_greedy(session, config, draft: Int8Draft) -> Iterator[torch.Tensor]:
    """Greedy decoding of a one-row session, ``config.draft_tokens`` proposals per check: yields
    each new token (1,) — exactly the tokens plain greedy decoding yields."""
    if config.max_new_tokens == 0:
        return
    eos = set(config.eos_ids)
    token = session.prefill().argmax(dim=-1)  # (1,)
    produced = 0
    while True:
        yield token
        produced += 1
        if produced == config.max_new_tokens or int(token) in eos:
            return
        k = min(config.draft_tokens, config.max_new_tokens - produced - 1)  # room for the checked token
        start = session.position
        proposals = draft.propose(session, token, k)
        best = session.run(torch.tensor([[int(token)] + proposals])).argmax(dim=-1).tolist()  # (k+1,)
        agreed = 0
        while agreed < k and proposals[agreed] == best[agreed]:
            agreed += 1
        for value in proposals[:agreed]:
            yield torch.tensor([value])
            produced += 1
            if value in eos:
                return
        session.rewind(start + 1 + agreed)
        token = torch.tensor([best[agreed]])
