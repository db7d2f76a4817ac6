"""Fill-mask: the most likely tokens at each mask of a text, from a masked-LM encoder (BERT,
RoBERTa, an lmlab MLM run), as ``transformers``' fill-mask pipeline gives them.

The mask is spelled as the model's tokenizer spells it (``[MASK]`` for BERT, ``<mask>`` for
RoBERTa and lmlab runs). A tokenizer that reads special tokens in text (Hugging Face ones) encodes
the whole text, with the special tokens the model was trained with ([CLS] … [SEP]); one that
never makes special tokens from text (lmlab's character tokenizer) encodes the pieces between
masks and puts the mask id between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models import EncoderMLM
from lmlab.tokenizers import HFTokenizer, Tokenizer


@dataclass(frozen=True)
class Filler:
    """One candidate for one mask: its id, its text, its probability, and the text filled in."""

    token: int
    token_str: str
    score: float
    sequence: str


def mask_token(tokenizer: Tokenizer) -> tuple[str, int]:
    """The tokenizer's mask token as text (``[MASK]``, ``<mask>``) and its id."""
    mask_id = tokenizer.special_tokens.get("mask")
    if mask_id is None:
        raise LmlabError("this tokenizer has no mask token; fill-mask needs a masked-LM model (BERT, RoBERTa, an lmlab MLM run)")
    return tokenizer.id_to_token(mask_id), mask_id


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[Filler]]:
    """For each mask in ``text`` (in order), its ``top_k`` most likely fillers, best first."""
    if not isinstance(model, EncoderMLM):
        raise LmlabError(f"fill-mask needs a masked-LM encoder (BERT, RoBERTa, an lmlab MLM run), not a {type(model).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise LmlabError(f"--top-k must be a positive integer, got {top_k!r}")
    spelling, mask_id = mask_token(tokenizer)
    if spelling not in text:
        raise LmlabError(f"the text has no mask token; this model spells it {spelling}")
    ids = encode_with_masks(tokenizer, text, spelling, mask_id)
    if len(ids) > model.max_positions:
        raise LmlabError(f"the text is {len(ids)} tokens, more than the model's {model.max_positions}; shorten it")
    device = next(model.parameters()).device
    positions = [i for i, token in enumerate(ids) if token == mask_id]
    was_training = model.training
    model.eval()
    logits = model(torch.tensor([ids], device=device))[0, positions]  # (M, V)
    model.train(was_training)
    top = logits.float().softmax(dim=-1).topk(min(top_k, logits.size(-1)), dim=-1)  # (M, k) each
    return [
        [_filler(tokenizer, ids, position, token, score, len(positions) == 1) for token, score in zip(tokens, scores)]
        for position, tokens, scores in zip(positions, top.indices.tolist(), top.values.tolist())
    ]


def encode_with_masks(tokenizer: Tokenizer, text: str, spelling: str, mask_id: int) -> list[int]:
    """``text`` as ids, each ``spelling`` of the mask as ``mask_id``."""
    if isinstance(tokenizer, HFTokenizer):  # reads special tokens in text; adds [CLS]/[SEP] or <s>/</s>
        return tokenizer.encode(text, add_special_tokens=True)
    ids: list[int] = []
    for index, piece in enumerate(text.split(spelling)):
        if index:
            ids.append(mask_id)
        ids += tokenizer.encode(piece)
    return ids


def _filler(tokenizer: Tokenizer, ids: list[int], position: int, token: int, score: float, only_mask: bool) -> Filler:
    """A candidate, with the text it makes; special tokens are left out when it fills the only
    mask (and kept, so the other masks show, when there are several), as the pipeline does."""
    filled = ids[:position] + [token] + ids[position + 1:]
    if only_mask:
        specials = set(tokenizer.special_tokens.values())
        filled = [t for t in filled if t not in specials]
    return Filler(token, tokenizer.decode([token]), score, tokenizer.decode(filled))
