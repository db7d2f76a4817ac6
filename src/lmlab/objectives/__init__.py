"""Pure batch transforms (ids → inputs, labels, masks) and the loss of each objective."""

from lmlab.objectives.base import IGNORE_INDEX, LMBatch, token_cross_entropy
from lmlab.objectives.causal_lm import causal_lm_batch, causal_lm_loss
from lmlab.objectives.denoising import DenoisingConfig, bart_noise, denoising_batch, denoising_loss
from lmlab.objectives.mlm import mlm_batch, mlm_loss
from lmlab.objectives.prefix_lm import prefix_lm_batch, prefix_lm_loss
from lmlab.objectives.span_corruption import (
    random_spans_noise_mask,
    reconstruct_from_spans,
    span_corruption_batch,
    span_corruption_loss,
)
from lmlab.objectives.ul2 import DEFAULT_DENOISERS, Denoiser, UL2Batch, ul2_batch, ul2_loss

__all__ = [
    "IGNORE_INDEX",
    "LMBatch",
    "causal_lm_batch",
    "causal_lm_loss",
    "token_cross_entropy",
    "DEFAULT_DENOISERS",
    "DenoisingConfig",
    "Denoiser",
    "UL2Batch",
    "bart_noise",
    "denoising_batch",
    "denoising_loss",
    "mlm_batch",
    "mlm_loss",
    "prefix_lm_batch",
    "prefix_lm_loss",
    "random_spans_noise_mask",
    "reconstruct_from_spans",
    "span_corruption_batch",
    "span_corruption_loss",
    "ul2_batch",
    "ul2_loss",
]
