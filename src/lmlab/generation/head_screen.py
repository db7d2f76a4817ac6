"""Exact top-k logits from a quarter of the LM head's bytes.

Greedy decoding needs only the best logit of each step, top-k sampling only the k best; yet the
LM head is the largest matrix a small model reads per token (GPT-2: 154 of 498 MB). A
:class:`ScreenedHead` keeps an int8 copy of the head's weight (one scale per vocabulary row) and
finds the k best logits in two passes:

1. approximate logits ``ŷ`` from the int8 copy (bfloat16 activations), each with a rigorous
   error bound ``β`` (below), so the exact logit lies in ``[ŷ - β, ŷ + β]``;
2. the exact float32 logits of the few *candidates*, the tokens whose upper bound reaches the
   k-th largest lower bound. No token outside them can be among the k best.

Every other logit is returned as −inf: greedy's argmax and top-k sampling see exactly what they
would have seen over the full vocabulary.

The bound, for hidden state ``h``, weight row ``w``, its int8 version ``s·q`` with residual
``r = w - s·q``, and ``hb`` = bfloat16(h)::

    |h·w - ŷ| ≤ ‖h‖·‖r‖ + ‖h - hb‖·‖s·q‖ + γ·‖hb‖·‖s·q‖ + 2⁻⁷·|ŷ|

(Cauchy–Schwarz for the weight and activation rounding, γ for float32 accumulation over the
hidden size, 2⁻⁷ for rounding the output to bfloat16), with a quarter more for safety.
"""

from __future__ import annotations

import torch

QMAX = 127
MAX_CANDIDATES = 512  # beyond this the screen saves nothing; compute the full logits instead
MAX_ROWS = 4  # the int8 kernel's advantage over a float32 product fades with more rows per step


def int8_kernel_available() -> bool:
    """Whether this PyTorch has the weight-only int8 matrix product the screen runs on."""
    return hasattr(torch, "_weight_int8pack_mm")


class ScreenedHead:
    """The k best logits of ``hidden @ weight.T``, exactly, from an int8 screen. weight: (V, C)
    float32 (any strides); it must not change afterwards (see :meth:`is_current`)."""

    def __init__(self, weight: torch.Tensor):
        w = weight.detach()
        self.weight = w
        self._version = weight._version
        amax = w.abs().amax(dim=1)  # (V,)
        scale = (amax / QMAX * (1 + 2**-7)).clamp(min=torch.finfo(torch.float32).tiny)  # ≥ amax/127 after rounding
        self.scale = scale.to(torch.bfloat16)  # (V,): the kernel takes the activations' dtype
        self.qweight = (w / self.scale.float()[:, None]).round().clamp(-QMAX, QMAX).to(torch.int8).contiguous()  # (V, C)
        dequantized = self.qweight.double() * self.scale.double()[:, None]  # (V, C)
        self.residual_norm = (w.double() - dequantized).norm(dim=1).float()  # (V,) ‖r‖
        self.dequant_norm = dequantized.norm(dim=1).float()  # (V,) ‖s·q‖
        hidden = w.size(1)
        self.gamma = (hidden + 1) * 2**-24 / (1 - (hidden + 1) * 2**-24)

    def is_current(self, weight: torch.Tensor) -> bool:
        """True while ``weight`` is still the tensor this screen was built from, unmodified."""
        return weight.detach().data_ptr() == self.weight.data_ptr() and weight._version == self._version

    def approximate(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, C) float32 → approximate logits (B, V) and their error bounds (B, V)."""
        hb = hidden.to(torch.bfloat16)
        approx = torch._weight_int8pack_mm(hb, self.qweight, self.scale).float()  # (B, V)
        h_norm = hidden.norm(dim=1, keepdim=True)  # (B, 1)
        rounding = (hidden - hb.float()).norm(dim=1, keepdim=True)  # (B, 1)
        hb_norm = hb.float().norm(dim=1, keepdim=True)  # (B, 1)
        bound = h_norm * self.residual_norm + (rounding + self.gamma * hb_norm) * self.dequant_norm  # (B, V)
        bound = 1.25 * (bound + 2**-7 * approx.abs())
        return approx, bound

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
        candidates = ((approx + bound) >= threshold).any(dim=0).nonzero().squeeze(1)  # (n,)
        if candidates.numel() > MAX_CANDIDATES:
            return None
        exact = hidden @ self.weight.index_select(0, candidates).t()  # (B, n)
        logits = torch.full_like(approx, float("-inf"))
        logits[:, candidates] = exact
        return logits


def screened_head(model: torch.nn.Module) -> ScreenedHead | None:
    """The model's cached :class:`ScreenedHead` (rebuilt when the head's weight changed), or None
    where screening does not apply: not a backbone plus a bias-free float32 CPU ``lm_head``, or no
    int8 kernel."""
    head = getattr(model, "lm_head", None)
    if not hasattr(model, "backbone") or not isinstance(head, torch.nn.Linear) or head.bias is not None or not int8_kernel_available():
        return None
    weight = head.weight
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    screen = model.__dict__.get("_head_screen")
    if screen is None or not screen.is_current(weight):
        screen = ScreenedHead(weight)
        model.__dict__["_head_screen"] = screen
    return screen
