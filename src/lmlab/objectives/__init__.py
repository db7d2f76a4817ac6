"""Pure batch transforms (ids → inputs, labels, masks) and the loss of each objective."""

from lmlab.objectives.base import IGNORE_INDEX, LMBatch, token_cross_entropy
from lmlab.objectives.causal_lm import causal_lm_batch, causal_lm_loss

__all__ = ["IGNORE_INDEX", "LMBatch", "causal_lm_batch", "causal_lm_loss", "token_cross_entropy"]
