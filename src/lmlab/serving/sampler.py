"""Per-request token choice for the serving engine: the processors of
:mod:`~lmlab.generation.processors` (repetition penalty, temperature, top-k, top-p, min-p), the
OpenAI presence and frequency penalties, a random generator of the request's own, and the
log-probabilities the response reports.

A row's logits go through the penalties first (repetition, then presence / frequency); the
reported log-probabilities are those of that distribution divided by the temperature (1 for
greedy), before top-k / top-p / min-p cut it down. Greedy (temperature 0) takes the argmax of
the penalised logits; sampling draws with the Gumbel-max trick exactly as
:meth:`~lmlab.generation.processors.LogitsPipeline.sample` does, so a seeded request gives the
tokens of ``generate(..., GenerationConfig(strategy="sample", seed=...))``. A request that asks
for no log-probabilities gets nan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmlab.generation.processors import LogitsPipeline, Processor


@dataclass
class Choice:
    """One step's token and its log-probabilities."""

    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]


def openai_penalties(prompt_len: int, presence: float, frequency: float) -> Processor:
    """OpenAI's penalties over the tokens generated so far (``ids`` past ``prompt_len``):
    ``presence`` once for every token that appeared, ``frequency`` × how often it did."""

    def penalise(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        generated = ids[:, prompt_len:]  # (B, N)
        counts = torch.zeros_like(logits).scatter_add_(-1, generated, torch.ones_like(generated, dtype=logits.dtype))
        return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts  # (B, V)

    return penalise


class RowSampler:
    """Chooses the tokens of one request (any object with the fields of
    :class:`~lmlab.serving.requests.EngineRequest`), whose prompt is ``prompt_len`` tokens."""

    def __init__(self, request, prompt_len: int, device: torch.device):
        self.greedy = request.temperature == 0
        self.temperature = 1.0 if self.greedy else request.temperature
        built = LogitsPipeline.build(
            sampling=not self.greedy, prompt_len=prompt_len, eos_ids=[], temperature=self.temperature,
            top_k=request.top_k, top_p=request.top_p, min_p=request.min_p,
            repetition_penalty=request.repetition_penalty,
        )
        self.penalties = list(built.processors)
        if request.presence_penalty or request.frequency_penalty:
            self.penalties.append(openai_penalties(prompt_len, request.presence_penalty, request.frequency_penalty))
        self.warpers = LogitsPipeline([], built.warpers, built.top_k)  # temperature, top-k, top-p, min-p
        self.top_logprobs = request.top_logprobs
        self.logprobs = request.logprobs or request.top_logprobs > 0
        self.argmax_only = self.greedy and not self.penalties and not self.logprobs  # the best logit decides
        self.generator = torch.Generator(device=device)
        if request.seed is not None:
            self.generator.manual_seed(request.seed)
        else:
            self.generator.seed()

    def penalise(self, seen: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The penalties on one row's float scores (1, V) after ``seen`` (1, L)."""
        for penalise in self.penalties:
            scores = penalise(seen, scores)  # (1, V)
        return scores

    def draw(self, seen: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """A sampled token (1,) from one row's penalised scores (1, V) (not for greedy rows)."""
        uniform = torch.rand(scores.shape, generator=self.generator, device=scores.device)  # (1, V)
        return self.warpers.pick(seen, scores, uniform)


def choose_tokens(samplers: list[RowSampler], seen: list[torch.Tensor], logits: torch.Tensor) -> list[Choice]:
    """The next token of each row: ``samplers[i]`` chooses row i of ``logits`` (n, V) after the
    tokens ``seen[i]`` (1, L_i). The argmax runs once over the batch; the log-softmax and the top
    alternatives only over the rows that report log-probabilities (the others get nan)."""
    scores = logits.float()  # (n, V)
    for i, sampler in enumerate(samplers):
        if sampler.penalties:
            scores[i:i + 1] = sampler.penalise(seen[i], scores[i:i + 1])
    tokens = scores.argmax(dim=-1)  # (n,) the greedy rows' choice
    for i, sampler in enumerate(samplers):
        if not sampler.greedy:
            tokens[i:i + 1] = sampler.draw(seen[i], scores[i:i + 1])
    chosen, alternatives = reported_logprobs(samplers, scores, tokens)
    return [Choice(token, logprob, top) for token, logprob, top in zip(tokens.tolist(), chosen, alternatives)]


def reported_logprobs(samplers: list[RowSampler], scores: torch.Tensor,
                      tokens: torch.Tensor) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Per row: the chosen token's log-probability (nan where not asked for) and its top
    alternatives, from the penalised ``scores`` (n, V) divided by each row's temperature."""
    n = len(samplers)
    chosen, alternatives = [math.nan] * n, [[] for _ in range(n)]
    rows = [i for i, sampler in enumerate(samplers) if sampler.logprobs]
    if not rows:
        return chosen, alternatives
    index = torch.tensor(rows, device=scores.device)  # (m,)
    temperature = torch.tensor([[samplers[i].temperature] for i in rows], device=scores.device)  # (m, 1)
    logprobs = (scores.index_select(0, index) / temperature).log_softmax(dim=-1)  # (m, V)
    picked = logprobs.gather(-1, tokens.index_select(0, index)[:, None])[:, 0].tolist()  # (m,)
    k = min(max(samplers[i].top_logprobs for i in rows), logprobs.size(-1))
    top_values, top_ids = torch.topk(logprobs, k) if k else (logprobs[:, :0], index[:, None][:, :0])  # (m, k)
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        wanted = samplers[i].top_logprobs
        chosen[i] = picked[j]
        alternatives[i] = list(zip(top_ids[j][:wanted], top_values[j][:wanted]))
    return chosen, alternatives
