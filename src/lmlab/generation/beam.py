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

from typing import Callable

import torch

from lmlab.generation.generate import GenerationConfig, GenerationOutput
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


def beam_search(session, ids: torch.Tensor, config: GenerationConfig, pad_id: int) -> GenerationOutput:
    """Beam search over a session of B·num_beams rows whose prompts ``ids`` (B·num_beams, L)
    repeat each input ``num_beams`` times."""
    nb = config.num_beams
    BN, L = ids.shape
    B = BN // nb
    device = ids.device
    max_length = L + config.max_new_tokens
    keep = max(2, 1 + len(config.eos_ids)) * nb
    top_mask = torch.arange(keep, device=device) < nb  # (keep,)
    eos = torch.tensor(config.eos_ids, dtype=torch.long, device=device)
    pipeline = config.pipeline(L)
    es, lp = config.early_stopping, config.length_penalty

    running = torch.full((B, nb, max_length), pad_id, dtype=torch.long, device=device)
    running[:, :, :L] = ids.view(B, nb, L)
    running_scores = torch.zeros(B, nb, device=device)
    running_scores[:, 1:] = NEG  # at first every beam is the same; only one may expand
    done = running.clone()  # the finished pool
    done_scores = torch.full((B, nb), NEG, device=device)
    done_lengths = torch.zeros(B, nb, dtype=torch.long, device=device)
    finished = torch.zeros(B, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    offset = torch.arange(B, device=device)[:, None] * nb  # (B, 1)

    logits = session.prefill()  # (B·nb, V)
    cur = L
    while True:
        adjust = (lambda logp: pipeline(running[:, :, :cur].reshape(BN, cur), logp)) if pipeline else None
        V = logits.size(-1)
        top_scores, top_index = best_continuations(logits, running_scores, keep, adjust)  # (B, keep)
        source = top_index // V  # which beam each continuation extends
        top_seqs = _take(running, source)  # (B, keep, max_length)
        top_seqs[:, :, cur] = top_index % V
        hits = torch.isin(top_seqs[:, :, cur], eos) | (cur + 1 >= max_length)  # (B, keep)

        # the best unfinished continuations run on
        run_scores = top_scores + hits.float() * NEG
        chosen = torch.topk(run_scores, nb).indices  # (B, nb)
        running = _take(top_seqs, chosen)
        running_scores = _take(run_scores, chosen)
        beam_source = _take(source, chosen)  # (B, nb)

        # finished candidates compete with the pool
        just_finished = hits & top_mask
        candidate = top_scores / ((cur + 1 - L) ** lp)
        candidate = candidate + (finished.all(-1, keepdim=True) & (es is True)).float() * NEG
        candidate = candidate + (~improvable).float() * NEG
        candidate = candidate + (~just_finished) * NEG
        merged_scores = torch.cat((done_scores, candidate), dim=1)
        best = torch.topk(merged_scores, nb).indices
        done = _take(torch.cat((done, top_seqs), dim=1), best)
        done_scores = _take(merged_scores, best)
        new_lengths = torch.full_like(candidate, cur + 1 - L, dtype=torch.long)
        done_lengths = _take(torch.cat((done_lengths, new_lengths), dim=1), best)
        finished = _take(torch.cat((finished, just_finished), dim=1), best)

        cur += 1
        length = (max_length - L) if (es == "never" and lp > 0) else (cur - L)
        best_running = running_scores[:, :1] / (length ** lp)
        worst_done = torch.where(finished, done_scores.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_running > worst_done).any(dim=-1, keepdim=True)
        still = bool(improvable.any()) and not (bool(finished.all()) and es is True) and not bool(hits.all())
        if not still:
            break
        session.reorder((beam_source + offset).view(-1))
        logits = session.step(running[:, :, cur - 1].reshape(-1))

    n = config.num_return_sequences
    sequences, lengths = done[:, :n].reshape(B * n, -1), done_lengths[:, :n].reshape(-1)
    out = [seq[L:L + int(k)] for seq, k in zip(sequences.tolist(), lengths.tolist())]
    return GenerationOutput(out, done_scores[:, :n].reshape(-1).tolist())
