"""Speculative decoding (greedy and sampling) with an int8 draft of the model itself.

At batch 1 a decoding step costs one pass over the weights, however few rows it computes, and the
native kernel makes that true up to 8 rows. So an int8 copy of the same model (a quarter of the
bytes, see :class:`~lmlab.generation.fast.draft.Int8Draft`) proposes ``k`` tokens one by one, then the float32 model checks all
of them in one step of ``k + 1`` rows: the proposals it agrees with are kept, and its own choice
follows the first disagreement. Every token is the float32 model's own choice — its argmax, or
its sample at the same uniform number plain sampling would draw — so the output is plain
decoding's; only the number of passes over the float32 weights drops (an int8 draft of GPT-2
agrees with it nearly always).

The draft writes its guesses into the same KV cache; the check overwrites those positions with
the float32 keys and values, and the cache position is rewound past the rejected ones.
"""

from __future__ import annotations

from typing import Iterator

import torch


def can_speculate(session, config) -> bool:
    """Whether ``session`` can decode ``config`` speculatively: drafts asked for, no processor
    that reads the history, and a session with an int8 draft (one unpadded row of a float32 CPU
    decoder the native kernels run)."""
    return config.draft_tokens > 0 and not config.reads_history() and session.draft is not None


def speculative_decode(session, strategy, config, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Greedy decoding or sampling of a one-row session, ``config.draft_tokens`` proposals per
    check: yields each new token (1,) — exactly the tokens plain decoding yields.

    Sampling draws one uniform number per vocabulary entry and token from ``generator`` (the
    Gumbel-max trick, see :meth:`~lmlab.generation.processors.LogitsPipeline.pick`); a proposal
    and the check of its position use the same numbers, so they agree unless the two
    distributions differ just where it matters, and the generator is left exactly as plain
    sampling would leave it."""
    if config.max_new_tokens == 0:
        return
    sampling = strategy.samples
    if sampling and generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    pipeline = strategy.pipeline(config, session.ids.size(1))
    vocab = session.model.lm_head.out_features
    draft = session.draft

    def choose(logits: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
        """logits (n, V), uniform (n, V) → tokens (n,)."""
        return strategy.pick(logits, uniform, pipeline, session.ids)

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
