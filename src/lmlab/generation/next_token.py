"""The next-token distribution of a prompt as decoding reshapes it: the probabilities at several
temperatures and the tokens that top-k and top-p keep (the decoding chapter's figures).

Every distribution comes from the logits processors generation samples with
(:class:`~lmlab.generation.processors.LogitsPipeline`), so what is shown is what sampling draws from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.processors import LogitsPipeline, check_sampling_settings
from lmlab.generation.session import check_length
from lmlab.models.interface import DECODER, require_generative


@dataclass
class NextTokenDistributions:
    """``logits`` (V,) the model's raw scores for the next token; ``by_temperature``: temperature →
    the (V,) probabilities sampling uses at it; ``sorted_probs`` (V,) the temperature-1
    probabilities in descending order; ``top_k_kept`` / ``top_p_kept``: how many of those tokens
    the filters ``top_k`` and ``top_p`` keep (None when that filter is not asked for)."""

    logits: torch.Tensor
    by_temperature: dict[float, torch.Tensor]
    sorted_probs: torch.Tensor
    top_k: int | None
    top_k_kept: int | None
    top_p: float | None
    top_p_kept: int | None

    def figure_numbers(self, decode: Callable[[list[int]], str], top_n: int) -> dict[str, Any]:
        """What the figure draws, as JSON values: per temperature the ``top_n`` most likely tokens
        (ids, text, probabilities); the cumulative curve over enough ranks to show both cut-offs."""
        bars = []
        for temperature, probs in self.by_temperature.items():
            top = probs.topk(min(top_n, probs.numel()))
            ids = top.indices.tolist()
            bars.append({"temperature": temperature, "ids": ids, "tokens": [decode([i]) for i in ids],
                         "probs": top.values.tolist()})
        shown = min(self.sorted_probs.numel(), max(2 * max(self.top_k_kept or 0, self.top_p_kept or 0), 100))
        cumulative = self.sorted_probs.double().cumsum(0)[:shown].tolist()
        return {"temperatures": bars, "cumulative": {
            "cumulative": cumulative, "top_k": self.top_k, "top_k_kept": self.top_k_kept,
            "top_p": self.top_p, "top_p_kept": self.top_p_kept}}


@torch.inference_mode()
def next_token_logits(model: nn.Module, prompt_ids: list[int]) -> torch.Tensor:
    """The (V,) float32 logits a decoder-only ``model`` gives the token after ``prompt_ids``."""
    require_generative(model)
    if model.structure != DECODER:
        raise LmlabError(f"{type(model).__name__} is an encoder-decoder; the next-token figure needs a decoder-only model")
    if not prompt_ids:
        raise LmlabError("the prompt is empty; give at least one token of context with --prompt")
    check_length(model, len(prompt_ids))
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    return model(ids)[0, -1].float().cpu()  # (V,)


def processed_probabilities(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """(V,) probabilities of (V,) ``logits`` after the sampling processors generation builds for
    these settings (tokens a filter removes get probability 0)."""
    check_sampling_settings(temperature, top_k, top_p)
    pipeline = LogitsPipeline.build(sampling=True, prompt_len=0, eos_ids=[], temperature=temperature,
                                    top_k=top_k, top_p=top_p)
    no_history = torch.zeros(1, 0, dtype=torch.long)  # the warpers do not read earlier tokens
    return pipeline(no_history, logits[None].float())[0].softmax(-1)  # (V,)


def next_token_distributions(
    logits: torch.Tensor, temperatures: list[float], top_k: int | None = None, top_p: float | None = None
) -> NextTokenDistributions:
    """The distributions of (V,) ``logits`` at each temperature, and the top-k / top-p cut-offs at
    temperature 1."""
    if not temperatures:
        raise LmlabError("no temperatures given; pass e.g. --temperatures 0.5,1,2")
    by_temperature = {t: processed_probabilities(logits, temperature=t) for t in temperatures}
    plain = processed_probabilities(logits)
    kept_k = None if top_k is None else int((processed_probabilities(logits, top_k=top_k) > 0).sum())
    kept_p = None if top_p is None else int((processed_probabilities(logits, top_p=top_p) > 0).sum())
    return NextTokenDistributions(logits, by_temperature, plain.sort(descending=True).values, top_k, kept_k, top_p, kept_p)
