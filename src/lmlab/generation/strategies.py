"""Decoding strategies: small classes over one shared decode loop.

A strategy says how each step's next token is chosen from the logits (:meth:`Strategy.choose`);
:meth:`Strategy.steps` is the loop every strategy but beam search shares: prefill the prompt,
then choose, yield and feed one token per row until EOS or the budget. Beam search
(:class:`~lmlab.generation.beam.BeamSearch`) keeps hypotheses instead, so it overrides
:meth:`Strategy.run`.
"""

from __future__ import annotations

from typing import Iterator

import torch

from lmlab.generation.config import GenerationConfig, GenerationOutput
from lmlab.generation.processors import LogitsPipeline
from lmlab.generation.speculative import can_speculate, speculative_decode


class Strategy:
    """How the next token of each row is chosen. ``samples``: it draws random numbers;
    ``whole_sequences``: its output is known only once decoding ends (nothing streams);
    ``default_beams``: the ``num_beams`` a command line gives it when none is asked for."""

    samples = False
    whole_sequences = False
    default_beams = 1

    def copies(self, config: GenerationConfig) -> int:
        """How many rows each prompt decodes as."""
        return config.num_return_sequences

    def decisive_logits(self, config: GenerationConfig) -> int | None:
        """How many of each step's best logits decide the next token (the others may be −inf,
        see :class:`~lmlab.generation.fast.ScreenedHead`); None: all of them."""
        return None

    def pipeline(self, config: GenerationConfig, prompt_len: int) -> LogitsPipeline:
        """The logits processors ``config`` asks for."""
        return LogitsPipeline.build(
            sampling=self.samples, prompt_len=prompt_len, eos_ids=list(config.eos_ids),
            temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, min_p=config.min_p,
            repetition_penalty=config.repetition_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size,
            min_new_tokens=config.min_new_tokens,
        )

    def choose(
        self, logits: torch.Tensor, seen: torch.Tensor, pipeline: LogitsPipeline, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The next token of each row: logits (B, V), seen (B, L) every token so far → (B,)."""
        raise NotImplementedError

    def pick(self, logits: torch.Tensor, uniform: torch.Tensor | None, pipeline: LogitsPipeline, seen: torch.Tensor) -> torch.Tensor:
        """:meth:`choose` with given uniform numbers (n, V) instead of a generator (speculative
        decoding draws them itself): logits (n, V) → (n,)."""
        raise NotImplementedError

    def steps(
        self, session, ids: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None, pad_id: int
    ) -> Iterator[torch.Tensor]:
        """The shared decode loop over a session whose prompt is ``ids`` (B, L): yields the new
        token of every row (B,) per step; finished rows (after EOS) get ``pad_id``, as in the
        reference. One unpadded row of a model with an int8 draft decodes speculatively."""
        if can_speculate(session, config):
            yield from speculative_decode(session, self, config, generator)
            return
        B, L = ids.shape
        seen = torch.empty(B, L + config.max_new_tokens, dtype=torch.long, device=ids.device)  # every token so far
        seen[:, :L] = ids
        pipeline = self.pipeline(config, L)
        eos = torch.tensor(config.eos_ids, dtype=torch.long, device=ids.device) if config.eos_ids else None
        unfinished = torch.ones(B, dtype=torch.bool, device=ids.device)
        logits = session.prefill()
        for t in range(config.max_new_tokens):
            token = self.choose(logits, seen[:, :L + t], pipeline, generator)  # (B,)
            if eos is not None:
                token = torch.where(unfinished, token, pad_id)
                unfinished &= ~torch.isin(token, eos)
            seen[:, L + t] = token
            yield token
            if t + 1 == config.max_new_tokens or (eos is not None and not bool(unfinished.any())):
                return
            logits = session.step(token)

    def run(
        self, session, ids: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None, pad_id: int
    ) -> GenerationOutput:
        """Decode every row to the end: the new tokens of each, cut after EOS."""
        rows = torch.stack(list(self.steps(session, ids, config, generator, pad_id)), dim=1).tolist()  # (B, N)
        return GenerationOutput(cut_after_eos(rows, config.eos_ids))


class Greedy(Strategy):
    """The most likely token, every step."""

    def decisive_logits(self, config: GenerationConfig) -> int | None:
        return None if config.reads_history() else 1

    def choose(self, logits, seen, pipeline, generator):
        if pipeline:
            logits = pipeline(seen, logits.float())
        return logits.argmax(dim=-1)

    def pick(self, logits, uniform, pipeline, seen):
        return logits.argmax(dim=-1)


class Sampling(Strategy):
    """A token drawn from the processed distribution (temperature, top-k, top-p, min-p, penalties)."""

    samples = True

    def decisive_logits(self, config: GenerationConfig) -> int | None:
        return None if config.reads_history() else config.top_k

    def choose(self, logits, seen, pipeline, generator):
        return pipeline.sample(seen, logits.float(), generator)

    def pick(self, logits, uniform, pipeline, seen):
        return pipeline.pick(seen, logits.float(), uniform)


def cut_after_eos(rows: list[list[int]], eos_ids: tuple[int, ...]) -> list[list[int]]:
    """Each row up to and including its first EOS."""
    eos = set(eos_ids)
    out = []
    for row in rows:
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        out.append(row[:end])
    return out
