"""Logits processors: small functions that reshape next-token scores before a choice is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from lmlab.errors import LmlabError


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide scores by ``temperature`` (< 1 sharpens, > 1 flattens). logits: (B, V)."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest scores per row; the rest become -inf. logits: (B, V)."""
    k = min(k, logits.size(-1))
    kth_best = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_best, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of top tokens whose probability reaches ``p``.

    Like the reference implementation, tokens are sorted ascending and those whose cumulative
    probability stays within ``1 - p`` are removed; the most likely token is always kept.
    logits: (B, V).
    """
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def check_sampling_settings(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject settings under which sampling is impossible, with one clear line each."""
    if not temperature > 0:
        raise LmlabError(f"temperature must be > 0 for sampling, got {temperature}; use --strategy greedy for argmax decoding")
    if top_k is not None and top_k < 1:
        raise LmlabError(f"top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise LmlabError(f"top-p must be in (0, 1], got {top_p}")


def min_p_filter(logits: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Min-p: drop tokens whose probability is below ``min_p`` × the top token's. logits: (B, V)."""
    probs = logits.softmax(dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)  # (B, V)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.size(-1)), dim=-1).indices
    remove.scatter_(-1, keep, False)
    return logits.masked_fill(remove, float("-inf"))


def repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on every token already in ``ids`` (B, L): positive scores ÷ penalty,
    negative × penalty. logits: (B, V)."""
    seen = logits.gather(-1, ids)  # (B, L)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(-1, ids, seen)


def no_repeat_ngram_ban(logits: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid every token that would repeat an n-gram already in its row of ``ids`` (B, L)."""
    L = ids.size(1)
    if L + 1 < n:
        return logits
    logits = logits.clone()
    for row, seq in enumerate(ids.tolist()):
        prefix = tuple(seq[L - n + 1:]) if n > 1 else ()
        banned = [seq[i + n - 1] for i in range(L - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
        if banned:
            logits[row, banned] = float("-inf")
    return logits


def suppress_tokens(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """Make ``token_ids`` impossible (minimum new tokens: the EOS ids until enough are made)."""
    logits = logits.clone()
    logits[:, token_ids] = float("-inf")
    return logits


Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids (B, L), logits (B, V)) → logits


@dataclass
class LogitsPipeline:
    """The processors a configuration asks for, in the reference order: repetition penalty,
    n-gram blocking, minimum new tokens; then (sampling only) the warpers temperature, top-k,
    top-p, min-p.

    With ``top_k``, top-k is not a mask over the whole vocabulary: :meth:`pick` takes the ``top_k``
    best scores first and runs the other warpers on those k only (the same distribution, far less
    work per step).
    """

    processors: list[Processor]
    warpers: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    top_k: int | None = None  # the shortlist size, when top-k is done by :meth:`sample`

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) every token so far (prompt included); logits: (B, V) float → processed (B, V)."""
        for process in self.processors:
            logits = process(ids, logits)
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        for warp in self.warpers:
            logits = warp(logits)
        return logits

    def __bool__(self) -> bool:
        return bool(self.processors or self.warpers or self.top_k is not None)

    def sample(self, ids: torch.Tensor, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One token per row (B,) drawn from the processed distribution, with one uniform number
        per row and vocabulary entry (B, V) from ``generator``."""
        return self.pick(ids, logits, torch.rand(logits.shape, generator=generator, device=logits.device))

    def pick(self, ids: torch.Tensor, logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """The sample (B,) that the uniform numbers ``uniform`` (B, V), one per token, select from
        each row's processed distribution: the Gumbel-max trick, argmax of the processed scores
        plus −log(−log u). Two distributions that differ a little pick the same token from the
        same numbers almost always — what speculative sampling relies on."""
        for process in self.processors:
            logits = process(ids, logits)
        if self.top_k is not None and self.top_k < logits.size(-1):
            values, index = torch.topk(logits, self.top_k, dim=-1)  # (B, k)
            uniform = uniform.gather(-1, index)  # each token keeps its own number
        else:
            values, index = logits, None
        for warp in self.warpers:
            values = warp(values)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(uniform.dtype).tiny)))
        choice = (values + gumbel).argmax(dim=-1)  # (B,)
        return choice if index is None else index.gather(-1, choice[:, None]).squeeze(-1)

    @classmethod
    def build(
        cls,
        *,
        sampling: bool,
        prompt_len: int,
        eos_ids: list[int],
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        min_new_tokens: int = 0,
    ) -> "LogitsPipeline":
        steps: list[Processor] = []
        if repetition_penalty != 1.0:
            steps.append(lambda ids, x: _repetition(x, ids, repetition_penalty))
        if no_repeat_ngram_size > 0:
            steps.append(lambda ids, x: no_repeat_ngram_ban(x, ids, no_repeat_ngram_size))
        if min_new_tokens > 0 and eos_ids:
            steps.append(lambda ids, x: suppress_tokens(x, eos_ids) if ids.size(1) - prompt_len < min_new_tokens else x)
        warpers: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if not sampling:
            return cls(steps)
        if top_p is not None and top_p < 1.0:
            warpers.append(lambda x: top_p_filter(x, top_p))
        if min_p is not None:
            warpers.append(lambda x: min_p_filter(x, min_p))
        if temperature != 1.0:  # temperature comes first; top-k's choice does not depend on it
            warpers.insert(0, lambda x: apply_temperature(x, temperature))
        return cls(steps, warpers, top_k)


_repetition = repetition_penalty
