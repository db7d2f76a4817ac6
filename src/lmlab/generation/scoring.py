"""Scoring: the log-probability of a continuation, and the per-step table of top alternatives."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.session import DecoderSession, check_length


@dataclass
class ContinuationScore:
    """``logprob``: the sum of the continuation's token log-probabilities (natural log);
    ``per_token``: each token's; ``perplexity``: exp(-mean)."""

    logprob: float
    per_token: list[float]

    @property
    def perplexity(self) -> float:
        return math.exp(-self.logprob / len(self.per_token)) if self.per_token else float("nan")


@torch.inference_mode()
def score_continuation(model: nn.Module, prompt_ids: list[int], continuation_ids: list[int]) -> ContinuationScore:
    """log p(continuation | prompt) of a decoder-only model, in one forward pass."""
    if not prompt_ids:
        raise LmlabError("the prompt is empty; scoring needs at least one token of context")
    if not continuation_ids:
        raise LmlabError("the continuation is empty; nothing to score")
    check_length(model, len(prompt_ids) + len(continuation_ids))
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + continuation_ids], device=device)  # (1, P + C)
    logits = model(ids[:, :-1])[0, len(prompt_ids) - 1:]  # (C, V): predictions of the continuation
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_token = logp.gather(-1, ids[0, len(prompt_ids):, None]).squeeze(-1)  # (C,)
    return ContinuationScore(float(per_token.sum()), per_token.tolist())


@dataclass
class AlternativesRow:
    """One greedy step: the tokens so far and the ``n`` most likely next tokens with probabilities."""

    context: list[int]
    choices: list[tuple[int, float]]


@torch.inference_mode()
def top_alternatives(model: nn.Module, prompt_ids: list[int], steps: int, n: int) -> list[AlternativesRow]:
    """Greedy decoding for ``steps`` tokens, recording the top ``n`` choices at each step (the
    textbook's greedy table: ``Input | Choice 1 (8.53%) | Choice 2 ...``)."""
    if n < 1:
        raise LmlabError(f"show-alternatives must be at least 1, got {n}")
    device = next(model.parameters()).device
    session = DecoderSession(model, torch.tensor([prompt_ids], device=device), None, steps)
    context, rows = list(prompt_ids), []
    logits = session.prefill()
    for step in range(steps):
        probs = logits[0].float().softmax(-1)
        top = torch.topk(probs, min(n, probs.numel()))
        rows.append(AlternativesRow(list(context), list(zip(top.indices.tolist(), top.values.tolist()))))
        token = top.indices[:1]
        context.append(int(token))
        if step + 1 < steps:
            logits = session.step(token)
    return rows


def format_alternatives(rows: list[AlternativesRow], decode: Callable[[list[int]], str], width: int = 40) -> str:
    """A Markdown table: ``| Input | Choice 1 | ... |``, each choice as ``text (p%)``."""
    n = max((len(r.choices) for r in rows), default=0)
    lines = ["| Input | " + " | ".join(f"Choice {i + 1}" for i in range(n)) + " |",
             "|" + "---|" * (n + 1)]
    for row in rows:
        text = decode(row.context).replace("\n", "\\n").replace("|", "\\|")
        if len(text) > width:
            text = "…" + text[-(width - 1):]
        cells = [f"{decode([t])!r} ({100 * p:.2f}%)".replace("|", "\\|") for t, p in row.choices]
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
