"""Beam search, step for step the reference (Hugging Face) algorithm, vectorised over the batch.

Each step keeps, per input, the ``num_beams`` best running hypotheses and a pool of the
``num_beams`` best finished ones:

1. every running beam's log-probabilities (after the processors) are added to its score;
2. the best ``2·num_beams`` (more with several EOS ids) continuations over all beams are taken;
3. those ending in EOS (or at the length limit) and ranked among the first ``num_beams`` become
   finished candidates, scored ``sum log p / new_length ** length_penalty``, and compete with the
   pool; the best unfinished ones continue;
4. the cache rows are reordered to follow their beams.

Stopping: with ``early_stopping=True`` an input is done once ``num_beams`` hypotheses finished;
with False, once no running beam can beat the worst finished one at the current length (the
reference heuristic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lmlab.generation.config import GenerationConfig, GenerationOutput
from lmlab.generation.processors import LogitsPipeline
from lmlab.generation.strategies import Strategy
from lmlab.kernels import log_softmax_topk

NEG = -1.0e9


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (B, K, ...) rows ``index`` (B, K') along dim 1."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def best_continuations(
    logits: torch.Tensor,
    running_scores: torch.Tensor,
    keep: int,
    adjust: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` best continuations of each input over all its beams: scores (running score +
    log-probability) and flat indices ``beam * V + token``. logits (B·nb, V) of the running beams;
    running_scores (B, nb); adjust: the logits processors, applied to the log-probabilities
    (B·nb, V) → (B, keep), (B, keep).

    Each beam's own best ``keep`` come first (one row each, which runs in parallel and avoids one
    long selection over nb·V), then the best ``keep`` of those nb·keep: the same set as a top-k
    over all nb·V."""
    B, nb = running_scores.shape
    V = logits.size(-1)
    k = min(keep, V)
    beam_scores, beam_tokens = beam_shortlists(logits, running_scores, k, adjust)  # (B, nb, k)
    flat = beam_tokens + torch.arange(nb, device=logits.device)[:, None] * V  # (B, nb, k)
    top_scores, pick = torch.topk(beam_scores.view(B, nb * k), keep)  # (B, keep)
    return top_scores, flat.view(B, nb * k).gather(1, pick)


def beam_shortlists(
    logits: torch.Tensor, running_scores: torch.Tensor, k: int, adjust: Callable[[torch.Tensor], torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each beam's k best continuations (see :func:`best_continuations`) → scores and tokens
    (B, nb, k). Without processors the native kernel finds them in one pass over the logits,
    without writing out the log-softmax."""
    B, nb = running_scores.shape
    if adjust is None:
        fused = log_softmax_topk(logits, k, running_scores.view(-1))  # (B·nb, k) each
        if fused is not None:
            return fused[0].view(B, nb, k), fused[1].view(B, nb, k)
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B·nb, V)
    if adjust is not None:
        logp = adjust(logp)
    return torch.topk(logp.view(B, nb, -1) + running_scores[:, :, None], k, dim=-1)


@dataclass
class Beams:
    """Beam search's state for B inputs of ``nb`` beams each: the running hypotheses and the pool
    of finished ones, every sequence (prompt included) in a (B, nb, max_length) buffer."""

    running: torch.Tensor  # (B, nb, max_length) the hypotheses still extended
    running_scores: torch.Tensor  # (B, nb) their summed log-probabilities
    done: torch.Tensor  # (B, nb, max_length) the finished pool
    done_scores: torch.Tensor  # (B, nb) length-penalised
    done_lengths: torch.Tensor  # (B, nb) new tokens in each
    finished: torch.Tensor  # (B, nb) bool: a real hypothesis holds the slot
    improvable: torch.Tensor  # (B, 1) bool: a running beam may still beat the pool
    prompt_len: int
    length: int  # tokens in every running sequence so far

    @classmethod
    def start(cls, ids: torch.Tensor, nb: int, max_length: int, pad_id: int) -> "Beams":
        """Every input's ``nb`` copies of its prompt; only the first may expand at the first step."""
        BN, L = ids.shape
        B, device = BN // nb, ids.device
        running = torch.full((B, nb, max_length), pad_id, dtype=torch.long, device=device)
        running[:, :, :L] = ids.view(B, nb, L)
        running_scores = torch.zeros(B, nb, device=device)
        running_scores[:, 1:] = NEG  # at first every beam is the same; only one may expand
        return cls(
            running, running_scores, running.clone(), torch.full((B, nb), NEG, device=device),
            torch.zeros(B, nb, dtype=torch.long, device=device), torch.zeros(B, nb, dtype=torch.bool, device=device),
            torch.ones(B, 1, dtype=torch.bool, device=device), L, L,
        )

    def history(self) -> torch.Tensor:
        """Every running sequence so far, (B·nb, length)."""
        B, nb, _ = self.running.shape
        return self.running[:, :, :self.length].reshape(B * nb, self.length)


class BeamSearch(Strategy):
    """The reference beam search (see the module docstring): each step expands every running
    beam, keeps the best unfinished continuations, moves finished ones into the pool, and stops
    once no running beam can improve on it."""

    whole_sequences = True
    default_beams = 4

    def copies(self, config: GenerationConfig) -> int:
        return config.num_beams

    def run(self, session, ids: torch.Tensor, config: GenerationConfig, generator, pad_id: int) -> GenerationOutput:
        """Beam search over a session of B·num_beams rows whose prompts ``ids`` (B·num_beams, L)
        repeat each input ``num_beams`` times."""
        nb = config.num_beams
        max_length = ids.size(1) + config.max_new_tokens
        beams = Beams.start(ids, nb, max_length, pad_id)
        pipeline = self.pipeline(config, ids.size(1))
        eos = torch.tensor(config.eos_ids, dtype=torch.long, device=ids.device)
        offset = torch.arange(beams.running.size(0), device=ids.device)[:, None] * nb  # (B, 1)
        logits = session.prefill()  # (B·nb, V)
        while True:
            top_scores, source, top_seqs, hits = self.expand(beams, logits, config, pipeline, eos, max_length)
            beam_source = self.continue_best(beams, top_scores, source, top_seqs, hits)
            self.collect_finished(beams, top_scores, top_seqs, hits, config)
            beams.length += 1
            if not self.goes_on(beams, hits, config, max_length):
                return self.result(beams, config)
            session.reorder((beam_source + offset).view(-1))
            logits = session.step(beams.running[:, :, beams.length - 1].reshape(-1))

    def expand(
        self,
        beams: Beams,
        logits: torch.Tensor,
        config: GenerationConfig,
        pipeline: LogitsPipeline,
        eos: torch.Tensor,
        max_length: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best continuations of each input over all its beams (more than ``nb``, so that
        enough stay unfinished): their scores (B, keep), source beams (B, keep), sequences (B,
        keep, max_length) and whether each ends here (B, keep), at an id of ``eos`` or the length limit."""
        nb = config.num_beams
        keep = max(2, 1 + len(config.eos_ids)) * nb
        adjust = (lambda logp: pipeline(beams.history(), logp)) if pipeline else None
        V = logits.size(-1)
        top_scores, top_index = best_continuations(logits, beams.running_scores, keep, adjust)  # (B, keep)
        source = top_index // V  # which beam each continuation extends
        top_seqs = _take(beams.running, source)  # (B, keep, max_length)
        top_seqs[:, :, beams.length] = top_index % V
        hits = torch.isin(top_seqs[:, :, beams.length], eos) | (beams.length + 1 >= max_length)  # (B, keep)
        return top_scores, source, top_seqs, hits

    @staticmethod
    def continue_best(
        beams: Beams, top_scores: torch.Tensor, source: torch.Tensor, top_seqs: torch.Tensor, hits: torch.Tensor
    ) -> torch.Tensor:
        """The best ``nb`` unfinished continuations become the running beams; → the beam each
        extends (B, nb)."""
        nb = beams.running.size(1)
        run_scores = top_scores + hits.float() * NEG
        chosen = torch.topk(run_scores, nb).indices  # (B, nb)
        beams.running = _take(top_seqs, chosen)
        beams.running_scores = _take(run_scores, chosen)
        return _take(source, chosen)

    @staticmethod
    def collect_finished(
        beams: Beams, top_scores: torch.Tensor, top_seqs: torch.Tensor, hits: torch.Tensor, config: GenerationConfig
    ) -> None:
        """Continuations that end here and rank among the first ``nb`` compete with the pool,
        scored ``sum log p / new_length ** length_penalty``."""
        nb = beams.running.size(1)
        new_length = beams.length + 1 - beams.prompt_len
        just_finished = hits & (torch.arange(hits.size(1), device=hits.device) < nb)  # (B, keep)
        candidate = top_scores / (new_length ** config.length_penalty)
        candidate = candidate + (beams.finished.all(-1, keepdim=True) & (config.early_stopping is True)).float() * NEG
        candidate = candidate + (~beams.improvable).float() * NEG
        candidate = candidate + (~just_finished) * NEG
        merged_scores = torch.cat((beams.done_scores, candidate), dim=1)
        best = torch.topk(merged_scores, nb).indices
        beams.done = _take(torch.cat((beams.done, top_seqs), dim=1), best)
        beams.done_scores = _take(merged_scores, best)
        new_lengths = torch.full_like(candidate, new_length, dtype=torch.long)
        beams.done_lengths = _take(torch.cat((beams.done_lengths, new_lengths), dim=1), best)
        beams.finished = _take(torch.cat((beams.finished, just_finished), dim=1), best)

    @staticmethod
    def goes_on(beams: Beams, hits: torch.Tensor, config: GenerationConfig, max_length: int) -> bool:
        """Whether any input may still improve: with ``early_stopping=True`` an input is done
        once its pool is full; otherwise once its best running beam cannot beat the pool's worst."""
        es, lp, L = config.early_stopping, config.length_penalty, beams.prompt_len
        length = (max_length - L) if (es == "never" and lp > 0) else (beams.length - L)
        best_running = beams.running_scores[:, :1] / (length ** lp)
        worst_done = torch.where(beams.finished, beams.done_scores.min(dim=1, keepdim=True).values, NEG)
        beams.improvable = beams.improvable & (best_running > worst_done).any(dim=-1, keepdim=True)
        return bool(beams.improvable.any()) and not (bool(beams.finished.all()) and es is True) and not bool(hits.all())

    @staticmethod
    def result(beams: Beams, config: GenerationConfig) -> GenerationOutput:
        """The ``num_return_sequences`` best finished hypotheses of each input, best first."""
        B, nb, _ = beams.done.shape
        n, L = config.num_return_sequences, beams.prompt_len
        sequences, lengths = beams.done[:, :n].reshape(B * n, -1), beams.done_lengths[:, :n].reshape(-1)
        out = [seq[L:L + int(k)] for seq, k in zip(sequences.tolist(), lengths.tolist())]
        return GenerationOutput(out, beams.done_scores[:, :n].reshape(-1).tolist())
