"""Exact top-k logits from a quarter of the LM head's bytes.

Greedy decoding needs only the best logit of each step, top-k sampling only the k best; yet the
LM head is the largest matrix a small model reads per token (about a third of GPT-2's bytes). A
:class:`ScreenedHead` keeps an int8 copy of the head's weight (one scale per vocabulary row) and
finds the k best logits in two passes:

1. approximate logits ``ŷ`` from the int8 copy and an int16 copy of the hidden state (the native
   kernel, exact integer sums), each with a rigorous error bound ``β``, so the exact logit lies
   in ``[ŷ - β, ŷ + β]``;
2. the exact float32 logits of the few *candidates*, the tokens whose upper bound reaches the
   k-th largest lower bound. No token outside them can be among the k best.

Every other logit is returned as −inf: greedy's argmax and top-k sampling see exactly what they
would have seen over the full vocabulary.

The bound, for hidden state ``h`` and its int16 version ``h̃``, weight row ``w`` and its int8
version ``s·q`` with residual ``r = w - s·q``::

    |h·w - ŷ| ≤ ‖h‖·‖r‖ + ‖h - h̃‖·‖s·q‖ + 2⁻²²·|ŷ|,   |ŷ| ≤ (‖h‖ + ‖h - h̃‖)·‖s·q‖

(Cauchy–Schwarz for the two roundings; the integer sum is exact and only its scaling to float32
rounds), with a quarter more for safety. ``‖r‖`` and ``‖s·q‖`` are computed once per row.
"""

from __future__ import annotations

import torch

from lmlab.kernels import MAX_ROWS, int8_activation_range, quantize_rows, quantize_weight, skinny_linear_int8

MAX_CANDIDATES = 512  # beyond this the screen saves nothing; compute the full logits instead


class ScreenedHead:
    """The k best logits of ``hidden @ weight.T``, exactly, from an int8 screen. weight: (V, C)
    float32 (any strides); it must not change afterwards (see :meth:`is_current`)."""

    def __init__(self, weight: torch.Tensor):
        w = weight.detach()
        self.weight = w
        self._version = weight._version
        self.qweight, self.scale = quantize_weight(w)  # (V, C) int8, (V,)
        dequantized = self.qweight.double() * self.scale.double()[:, None]  # (V, C)
        self.residual_norm = (1.25 * (w.double() - dequantized).norm(dim=1)).float()  # (V,) ‖r‖, with the margin
        self.dequant_norm = (1.25 * dequantized.norm(dim=1)).float()  # (V,) ‖s·q‖, with the margin
        self.activation_range = int8_activation_range(w.size(1))

    def is_current(self, weight: torch.Tensor) -> bool:
        """True while ``weight`` is still the tensor this screen was built from, unmodified."""
        return weight.detach().data_ptr() == self.weight.data_ptr() and weight._version == self._version

    def approximate(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, C) float32, B ≤ ``MAX_ROWS`` → approximate logits (B, V) and error bounds (B, V)."""
        hq, hscale = quantize_rows(hidden, self.activation_range)  # hidden ≈ hq · hscale
        approx = skinny_linear_int8(hq, hscale, self.qweight, self.scale)  # (B, V)
        h_norm = hidden.double().norm(dim=1, keepdim=True)  # (B, 1)
        h_error = (hidden.double() - hq.double() * hscale.double()[:, None]).norm(dim=1, keepdim=True)  # (B, 1)
        activation_term = h_error + 2**-22 * (h_norm + h_error)  # (B, 1)
        bound = h_norm.float() * self.residual_norm  # (B, V)
        return approx, bound.addcmul_(activation_term.float(), self.dequant_norm)  # (B, V)

    def top_logits(self, hidden: torch.Tensor, k: int) -> torch.Tensor | None:
        """hidden (B, C) → logits (B, V): exact float32 wherever a token may be among the row's
        k best, −inf elsewhere; None when too many tokens are that close, or the batch has more
        than ``MAX_ROWS`` rows (compute them all)."""
        if hidden.size(0) > MAX_ROWS:
            return None
        approx, bound = self.approximate(hidden)
        lower = approx - bound  # (B, V)
        if k == 1:
            threshold = lower.amax(dim=1, keepdim=True)  # (B, 1): the best lower bound
        else:
            threshold = lower.topk(min(k, lower.size(1)), dim=1).values[:, -1:]  # (B, 1): the k-th best
        upper = bound.add_(approx)  # (B, V), in place: (B, V) temporaries cost more than their arithmetic here
        candidates = (upper >= threshold).any(dim=0).nonzero().squeeze(1)  # (n,)
        if candidates.numel() > MAX_CANDIDATES:
            return None
        exact = hidden @ self.weight.index_select(0, candidates).t()  # (B, n)
        logits = lower.fill_(float("-inf"))  # (B, V), reusing the lower bounds' memory
        logits[:, candidates] = exact
        return logits
