"""Speculative decoding (greedy and sampling) with an int8 draft of the model itself.

At batch 1 a decoding step costs one pass over the weights, however few rows it computes, and the
native kernel makes that true up to 8 rows. So an int8 copy of the same model (a quarter of the
bytes, see :class:`Int8Draft`) proposes ``k`` tokens one by one, then the float32 model checks all
of them in one step of ``k + 1`` rows: the proposals it agrees with are kept, and its own choice
follows the first disagreement. Every token is the float32 model's own choice — its argmax, or
its sample at the same uniform number plain sampling would draw — so the output is plain
decoding's; only the number of passes over the float32 weights drops (an int8 draft of GPT-2
agrees with it about 95% of the time).

The draft writes its guesses into the same KV cache; the check overwrites those positions with
the float32 keys and values, and the cache position is rewound past the rejected ones.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from lmlab.generation.head_screen import screened_head
from lmlab.kernels import quantize_weight, skinny_linear_int8_float
from lmlab.layers.linear import Linear, quantized_weights


def _weight_versions(model: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class Int8Draft:
    """Int8 copies (per-row scales) of a decoder's :class:`~lmlab.layers.linear.Linear` layers and
    LM head. ``propose`` runs the same backbone with them through the native int8 kernel."""

    def __init__(self, model: nn.Module):
        self.table = {m: quantize_weight(m.weight) for m in model.backbone.modules() if isinstance(m, Linear)}
        screen = screened_head(model)  # its int8 head serves the draft too
        self.head = (screen.qweight, screen.scale)
        self.versions = _weight_versions(model)

    def propose(self, session, token: torch.Tensor, k: int, choose, uniform: torch.Tensor | None) -> list[int]:
        """The draft's ``k`` tokens after ``token`` (1,), each picked by ``choose(logits (1, V),
        uniform (1, V) or None)`` with ``uniform[i]``, written into ``session``'s cache from its
        current position, which is left unchanged."""
        start, proposals = session.position, []
        with quantized_weights(self.table):
            for i in range(k):
                hidden = session.model.backbone(token[:, None], session.cache, start + i)[:, -1]  # (1, C)
                logits = skinny_linear_int8_float(hidden, *self.head)  # (1, V)
                token = choose(logits, None if uniform is None else uniform[i : i + 1])  # (1,)
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
    """Whether ``session`` can decode ``config`` speculatively: greedy decoding or sampling (no
    processor that reads the history) of one unpadded sequence of a float32 CPU decoder the native
    kernel runs."""
    return (
        config.strategy in ("greedy", "sample") and config.draft_tokens > 0 and not config.reads_history()
        and getattr(session, "draftable", False)
    )


def speculative_decode(session, config, draft: Int8Draft, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Greedy decoding or sampling of a one-row session, ``config.draft_tokens`` proposals per
    check: yields each new token (1,) — exactly the tokens plain decoding yields.

    Sampling draws one uniform number per vocabulary entry and token from ``generator`` (the
    Gumbel-max trick, see :meth:`~lmlab.generation.processors.LogitsPipeline.pick`); a proposal
    and the check of its position use the same numbers, so they agree unless the two
    distributions differ just where it matters, and the generator is left exactly as plain
    sampling would leave it."""
    if config.max_new_tokens == 0:
        return
    sampling = config.strategy == "sample"
    if sampling and generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    pipeline = config.pipeline(session.ids.size(1))
    vocab = session.model.lm_head.out_features

    def choose(logits: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
        """logits (n, V), uniform (n, V) → tokens (n,)."""
        return pipeline.pick(session.ids, logits.float(), uniform) if sampling else logits.argmax(dim=-1)

    def draw(n: int) -> tuple[torch.Tensor | None, list]:
        """Uniform numbers for n tokens (n, V), as plain sampling draws them, and the generator's
        state after each token's."""
        if not sampling:
            return None, [None] * n
        values, states = [], []
        for _ in range(n):
            values.append(torch.rand(1, vocab, generator=generator))
            states.append(generator.get_state())
        return torch.cat(values), states

    eos = set(config.eos_ids)
    uniform, _ = draw(1)
    token = choose(session.prefill(), uniform)  # (1,)
    produced = 0
    while True:
        yield token
        produced += 1
        if produced == config.max_new_tokens or int(token) in eos:
            return
        k = min(config.draft_tokens, config.max_new_tokens - produced - 1)  # room for the checked token
        uniform, states = draw(k + 1)
        start = session.position
        proposals = draft.propose(session, token, k, choose, uniform)
        best = choose(session.run(torch.tensor([[int(token)] + proposals])), uniform).tolist()  # (k+1,)
        agreed = 0
        while agreed < k and proposals[agreed] == best[agreed]:
            agreed += 1
        if sampling:
            generator.set_state(states[agreed])  # the numbers of the tokens kept, no more
        for value in proposals[:agreed]:
            yield torch.tensor([value])
            produced += 1
            if value in eos:
                return
        session.rewind(start + 1 + agreed)
        token = torch.tensor([best[agreed]])
