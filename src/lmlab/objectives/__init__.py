"""Pure batch transforms (ids → inputs, labels, masks) and the token cross-entropy they all share."""

from lmlab.objectives.base import IGNORE_INDEX, LMBatch, token_cross_entropy
from lmlab.objectives.causal_lm import causal_lm_batch
from lmlab.objectives.denoising import DenoisingConfig, bart_noise, denoising_batch
from lmlab.objectives.mlm import mlm_batch
from lmlab.objectives.prefix_lm import prefix_lm_batch
from lmlab.objectives.span_corruption import (
    random_spans_noise_mask,
    reconstruct_from_spans,
    span_corruption_batch,
)
from lmlab.objectives.ul2 import DEFAULT_DENOISERS, Denoiser, UL2Batch, ul2_batch

__all__ = [
    "IGNORE_INDEX",
    "LMBatch",
    "causal_lm_batch",
    "token_cross_entropy",
    "DEFAULT_DENOISERS",
    "DenoisingConfig",
    "Denoiser",
    "UL2Batch",
    "bart_noise",
    "denoising_batch",
    "mlm_batch",
    "prefix_lm_batch",
    "random_spans_noise_mask",
    "reconstruct_from_spans",
    "span_corruption_batch",
    "ul2_batch",
]
