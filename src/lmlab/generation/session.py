"""Decoding sessions: a model plus its static KV cache for a batch of rows.

A session knows how to ``prefill`` the prompt and how to ``step`` one token per row, and can
``reorder`` its rows (beam search). The strategies (greedy, sampling, beam) only talk to this
interface, so the same loop drives decoder-only and encoder-decoder models.

The cache is preallocated once for the whole generation; every step writes one position in place.
A left-padded batch carries a boolean key mask over every cache slot (built once; each step uses a
view of it) and per-row positions (``attention_mask.cumsum(-1) - 1``, like the reference).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.head_screen import MAX_ROWS, ScreenedHead, screened_head
from lmlab.generation.weight_layout import prepare_for_decoding


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths → ids (B, L) padded on the left and mask (B, L), True at tokens."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise LmlabError("every prompt needs at least one token")
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, L - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, L - len(prompt):] = True
    return ids.to(device), mask.to(device)


def check_length(model: nn.Module, total: int) -> None:
    """A static cache holds at most the model's context."""
    max_positions = getattr(model, "max_positions", None)
    if max_positions is not None and total > max_positions:
        raise LmlabError(
            f"prompt plus new tokens is {total} positions but the model's context holds {max_positions}; "
            "lower --max-new-tokens or shorten the prompt"
        )


def ready_for_decoding(model: nn.Module) -> nn.Module:
    """A model in eval mode gets the weight layout decoding streams fastest (see
    :mod:`~lmlab.generation.weight_layout`); one being trained is left as it is."""
    return model if model.training else prepare_for_decoding(model)


def last_position_logits(model: nn.Module, ids: torch.Tensor, cache, start_pos: int, **padding: torch.Tensor) -> torch.Tensor:
    """Run ``ids`` (B, T) from ``start_pos`` through a decoder, filling ``cache``; the logits of the
    last position only (B, V) — a backbone + LM head model skips the head for the others."""
    if hasattr(model, "backbone") and isinstance(getattr(model, "lm_head", None), nn.Module):
        return model.lm_head(model.backbone(ids, cache, start_pos, **padding)[:, -1])
    return model(ids, cache, start_pos, **padding)[:, -1]


def next_token_logits(
    model: nn.Module,
    token: torch.Tensor,
    cache,
    position: int,
    screen: ScreenedHead | None = None,
    top_logits: int | None = None,
    **padding: torch.Tensor,
) -> torch.Tensor:
    """Feed one token per row (B,) at ``position``; the logits for the next (B, V). With a
    ``screen``, only each row's ``top_logits`` best are exact and the rest −inf (see
    :mod:`~lmlab.generation.head_screen`)."""
    if screen is None:
        return last_position_logits(model, token[:, None], cache, position, **padding)
    return screened_logits(model, model.backbone(token[:, None], cache, position, **padding)[:, -1], screen, top_logits)


def screened_logits(model: nn.Module, hidden: torch.Tensor, screen: ScreenedHead | None, top_logits: int | None) -> torch.Tensor:
    """The LM head on hidden states (n, C): the screened top logits where ``screen`` can tell
    them apart, every logit otherwise (no screen, or too close to call)."""
    logits = screen.top_logits(hidden, top_logits) if screen is not None else None
    return logits if logits is not None else model.lm_head(hidden)


def reorder_cache(cache, index: torch.Tensor, length: int | None = None) -> None:
    """Rows of a KV cache (``reorder``, its first ``length`` positions) or of a GRU's hidden state
    (B on dim 1) become rows ``index``; nothing moves when ``index`` is the identity."""
    if bool((index == torch.arange(index.numel(), device=index.device)).all()):
        return
    if hasattr(cache, "reorder"):
        cache.reorder(index, length)
    elif getattr(cache, "hidden", None) is not None:
        cache.hidden = cache.hidden.index_select(1, index)


class DecoderSession:
    """A decoder-only model decoding ``ids`` (B, L) (left-padded when ``mask`` has False entries)
    for up to ``max_new_tokens`` more positions, each prompt as ``copies`` rows (beams, returned
    sequences; row ``i`` decodes prompt ``i // copies``). The prompt runs once per prompt, not
    once per copy.

    ``top_logits``: the strategy needs only each row's k best logits per step (greedy: 1, top-k
    sampling: k); the others may come back as −inf, which lets a float32 CPU model find them
    through a :class:`~lmlab.generation.head_screen.ScreenedHead`."""

    def __init__(
        self,
        model: nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        max_new_tokens: int,
        top_logits: int | None = None,
        copies: int = 1,
    ):
        B, L = ids.shape
        rows = B * copies
        check_length(model, L + max_new_tokens)
        self.model = ready_for_decoding(model)
        self.ids = ids
        self.copies = copies
        self.rows = rows
        self.top_logits = top_logits
        self.screen = screened_head(model) if top_logits is not None and rows <= MAX_ROWS and not model.training else None
        self.cache = model.new_cache(rows, L + max_new_tokens)
        self.position = 0  # the next cache slot
        self.prompt_mask: torch.Tensor | None = None  # (B, L) bool, True at real tokens
        self.mask: torch.Tensor | None = None  # (rows, L + max_new) bool
        self.positions: torch.Tensor | None = None  # (rows, 1) the next token's position per row
        if mask is not None and not bool(mask.all()):
            if "attention_mask" not in inspect.signature(model.forward).parameters:
                raise LmlabError(f"{type(model).__name__} takes no padding; give prompts of one length")
            self.prompt_mask = mask
            self.mask = torch.ones(rows, L + max_new_tokens, dtype=torch.bool, device=ids.device)
            self.mask[:, :L] = mask.repeat_interleave(copies, dim=0)
            self.positions = mask.long().sum(-1, keepdim=True).repeat_interleave(copies, dim=0)  # (rows, 1)

    @property
    def draftable(self) -> bool:
        """One unpadded row of a float32 CPU decoder the native kernel runs: what speculative
        decoding (:mod:`~lmlab.generation.speculative`) needs."""
        return self.rows == 1 and self.mask is None and not self.model.training and screened_head(self.model) is not None

    def prefill(self) -> torch.Tensor:
        """Run the prompts; logits of their last position (rows, V)."""
        L = self.ids.size(1)
        self.position = L
        padding = {}
        if self.prompt_mask is not None:
            position_ids = (self.prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
            padding = dict(attention_mask=self.prompt_mask, position_ids=position_ids)
        if self.copies == 1:
            return last_position_logits(self.model, self.ids, self.cache, 0, **padding)
        if not hasattr(self.cache, "copy_rows_from"):  # e.g. a GRU's state: run every copy
            padding = {k: v.repeat_interleave(self.copies, dim=0) for k, v in padding.items()}
            return last_position_logits(self.model, self.ids.repeat_interleave(self.copies, dim=0), self.cache, 0, **padding)
        prompt_cache = self.model.new_cache(self.ids.size(0), L)
        logits = last_position_logits(self.model, self.ids, prompt_cache, 0, **padding)  # (B, V)
        spread = torch.arange(self.ids.size(0), device=self.ids.device).repeat_interleave(self.copies)  # (rows,)
        self.cache.copy_rows_from(prompt_cache, spread)
        return logits.index_select(0, spread)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); logits for the next (B, V)."""
        pos = self.position
        self.position = pos + 1
        padding = {} if self.mask is None else dict(attention_mask=self.mask[:, :pos + 1], position_ids=self.positions)
        logits = next_token_logits(self.model, token, self.cache, pos, self.screen, self.top_logits, **padding)
        if self.positions is not None:
            self.positions += 1
        return logits

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed T tokens (1, T) of an unpadded one-row session from the current position; the
        logits after each of them (T, V) (screened, like :meth:`step`). Speculative decoding
        checks a draft's proposals this way."""
        pos = self.position
        self.position = pos + tokens.size(1)
        hidden = self.model.backbone(tokens, self.cache, pos)[0]  # (T, C)
        return screened_logits(self.model, hidden, self.screen, self.top_logits)

    def rewind(self, position: int) -> None:
        """The next token goes to cache slot ``position`` (later slots are overwritten as decoding
        goes on; attention never reads past the current position)."""
        self.position = position

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows ``index`` (B,) of before."""
        reorder_cache(self.cache, index, self.position)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)


class Seq2SeqSession:
    """An encoder-decoder model: the encoder runs once on ``input_ids`` (B, S); each of its rows is
    decoded ``copies`` times (beams, returned sequences) from ``decoder_ids`` (B·copies, L). The
    cross-attention keys/values are computed at the first step and cached."""

    def __init__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        input_mask: torch.Tensor | None,
        decoder_ids: torch.Tensor,
        max_new_tokens: int,
        copies: int = 1,
    ):
        check_length(model, decoder_ids.size(1) + max_new_tokens)
        self.model = model = ready_for_decoding(model)
        self.rnn = "attention_mask" not in inspect.signature(model.decode).parameters  # GRU: memory is a state
        memory = model.encode(input_ids, input_mask)  # (B, S, C); a GRU's (n_layer, B, H)
        self.memory = memory.repeat_interleave(copies, dim=1 if self.rnn else 0)  # one per row
        self.memory_mask = input_mask.repeat_interleave(copies, dim=0) if input_mask is not None else None
        self.ids = decoder_ids
        self.cache = model.new_cache(decoder_ids.size(0), decoder_ids.size(1) + max_new_tokens)
        self.position = 0

    def _decode(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        if self.rnn:
            return self.model.decode(ids, self.memory, cache=self.cache, start_pos=pos)[:, -1]
        return self.model.decode(ids, self.memory, attention_mask=self.memory_mask, cache=self.cache, start_pos=pos)[:, -1]

    def prefill(self) -> torch.Tensor:
        self.position = self.ids.size(1)
        return self._decode(self.ids, 0)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        pos = self.position
        self.position = pos + 1
        return self._decode(token[:, None], pos)

    def reorder(self, index: torch.Tensor) -> None:
        reorder_cache(self.cache, index, self.position)  # beams never leave their input, so memory stays as it is
