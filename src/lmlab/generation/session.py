"""Decoding sessions: the state of one generation call — the model that decodes (the native
twin where one applies, see :mod:`~lmlab.generation.fast`), its static cache for a batch of rows,
and what the fast path adds (head screen, int8 draft, beam search's row table).

A session knows how to ``prefill`` the prompt and how to ``step`` one token per row, and can
``reorder`` its rows (beam search). The strategies (greedy, sampling, beam) only talk to this
interface, so the same loop drives decoder-only and encoder-decoder models.

The cache is preallocated once for the whole generation; every step writes one position in place.
A left-padded batch carries a boolean key mask over every cache slot (built once; each step uses a
view of it) and per-row positions (``attention_mask.cumsum(-1) - 1``, like the reference).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.fast import FastPath, ScreenedHead, fast_path
from lmlab.generation.fast.draft import Int8Draft
from lmlab.generation.weight_layout import prepare_for_decoding
from lmlab.kernels import MAX_ROWS
from lmlab.models.interface import DecoderModel, EncoderDecoderModel, require_generative


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
    if model.max_positions is not None and total > model.max_positions:
        raise LmlabError(
            f"prompt plus new tokens is {total} positions but the model's context holds {model.max_positions}; "
            "lower --max-new-tokens or shorten the prompt"
        )


def decoding_model(model: nn.Module) -> tuple[nn.Module, FastPath | None]:
    """The module that decodes ``model`` and its fast path: the native twin where one applies;
    otherwise the model itself (in eval mode, with the weight layout the fallback streams fastest,
    see :mod:`~lmlab.generation.weight_layout`; a model being trained is left as it is)."""
    require_generative(model)
    fast = fast_path(model)
    if fast is not None:
        return fast.twin, fast
    return (model if model.training else prepare_for_decoding(model)), None


class DecoderSession:
    """A decoder-only model decoding ``ids`` (B, L) (left-padded when ``mask`` has False entries)
    for up to ``max_new_tokens`` more positions, each prompt as ``copies`` rows (beams, returned
    sequences; row ``i`` decodes prompt ``i // copies``). The prompt runs once per prompt, not
    once per copy.

    ``top_logits``: the strategy needs only each row's k best logits per step (greedy: 1, top-k
    sampling: k); the others may come back as −inf, which lets the fast path find them through a
    :class:`~lmlab.generation.fast.ScreenedHead`."""

    def __init__(
        self,
        model: DecoderModel,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        max_new_tokens: int,
        top_logits: int | None = None,
        copies: int = 1,
    ):
        B, L = ids.shape
        rows = B * copies
        self.check_room(model, L + max_new_tokens)
        self.model, self.fast = decoding_model(model)
        self.ids = ids
        self.copies = copies
        self.rows = rows
        self.top_logits = top_logits
        self.screen: ScreenedHead | None = None
        if self.fast is not None and top_logits is not None and rows <= MAX_ROWS:
            self.screen = self.fast.screen()
        self.cache = self.model.new_cache(rows, self.cache_length(L + max_new_tokens))
        self.row_table = self.fast.row_table(self.cache) if self.fast is not None and copies > 1 else None
        self.position = 0  # the next cache slot
        self.prompt_mask: torch.Tensor | None = None  # (B, L) bool, True at real tokens
        self.mask: torch.Tensor | None = None  # (rows, L + max_new) bool
        self.positions: torch.Tensor | None = None  # (rows, 1) the next token's position per row
        if mask is not None and not bool(mask.all()):
            if not model.takes_padding:
                raise LmlabError(f"{type(model).__name__} takes no padding; give prompts of one length")
            self.prompt_mask = mask
            self.mask = torch.ones(rows, L + max_new_tokens, dtype=torch.bool, device=ids.device)
            self.mask[:, :L] = mask.repeat_interleave(copies, dim=0)
            self.positions = mask.long().sum(-1, keepdim=True).repeat_interleave(copies, dim=0)  # (rows, 1)

    def check_room(self, model: DecoderModel, total: int) -> None:
        """The prompt and the new tokens must fit the static cache."""
        check_length(model, total)

    def cache_length(self, total: int) -> int:
        """The cache's length for ``total`` positions."""
        return total

    @property
    def draft(self) -> Int8Draft | None:
        """The int8 draft speculative decoding (:mod:`~lmlab.generation.speculative`) proposes
        with: for one unpadded row on the fast path with a head screen; None otherwise."""
        if self.rows != 1 or self.mask is not None or self.screen is None:
            return None
        return self.fast.draft()

    def _forward(self, ids: torch.Tensor, start_pos: int, cache=None, **padding: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, C) of ``ids`` (B, T) from ``start_pos``, filling ``cache`` (default:
        the session's, read through the row table while one is in use)."""
        if cache is not None:
            return self.model.hidden_states(ids, cache, start_pos, **padding)
        reading = self.row_table.in_use() if self.row_table is not None else nullcontext()
        with reading:
            return self.model.hidden_states(ids, self.cache, start_pos, **padding)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states (n, C): the screened top logits where the screen can tell
        them apart, every logit otherwise."""
        logits = self.screen.top_logits(hidden, self.top_logits) if self.screen is not None else None
        return logits if logits is not None else self.model.lm_head(hidden)

    def prefill(self) -> torch.Tensor:
        """Run the prompts; logits of their last position (rows, V)."""
        L = self.ids.size(1)
        self.position = L
        padding = {}
        if self.prompt_mask is not None:
            position_ids = (self.prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
            padding = dict(attention_mask=self.prompt_mask, position_ids=position_ids)
        if self.copies == 1:
            return self.model.lm_head(self._forward(self.ids, 0, **padding)[:, -1])
        prompt_cache = self.model.new_cache(self.ids.size(0), L)
        logits = self.model.lm_head(self._forward(self.ids, 0, prompt_cache, **padding)[:, -1])  # (B, V)
        spread = torch.arange(self.ids.size(0), device=self.ids.device).repeat_interleave(self.copies)  # (rows,)
        self.cache.copy_rows_from(prompt_cache, spread)
        return logits.index_select(0, spread)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); logits for the next (B, V)."""
        pos = self.position
        self.position = pos + 1
        padding = {} if self.mask is None else dict(attention_mask=self.mask[:, :pos + 1], position_ids=self.positions)
        logits = self._logits(self._forward(token[:, None], pos, **padding)[:, -1])
        if self.positions is not None:
            self.positions += 1
        return logits

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed T tokens (1, T) of an unpadded one-row session from the current position; the
        logits after each of them (T, V) (screened, like :meth:`step`). Speculative decoding
        checks a draft's proposals this way."""
        pos = self.position
        self.position = pos + tokens.size(1)
        return self._logits(self._forward(tokens, pos)[0])

    def rewind(self, position: int) -> None:
        """The next token goes to cache slot ``position`` (later slots are overwritten as decoding
        goes on; attention never reads past the current position)."""
        self.position = position

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows ``index`` (B,) of before: through the row table on the fast path
        (nothing moves), by moving the rows that change otherwise (also once a layer that cannot
        read through the table made it settle)."""
        if bool((index == torch.arange(index.numel(), device=index.device)).all()):
            return
        if self.row_table is not None and not self.row_table.fell_back:
            self.row_table.follow(index, self.position)
        else:
            self.cache.reorder(index, self.position)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)


class SlidingWindowSession(DecoderSession):
    """One unpadded row that decodes past the model's context: when the cache is full, it is
    rebuilt from the last half of the context (the prompt's end and what was generated since)."""

    def __init__(self, model: DecoderModel, ids: torch.Tensor, max_new_tokens: int, top_logits: int | None = None):
        super().__init__(model, ids, None, max_new_tokens, top_logits)
        self.history = ids[0].tolist()  # every token so far

    def check_room(self, model: DecoderModel, total: int) -> None:
        """Any length fits: the window slides."""

    def cache_length(self, total: int) -> int:
        return self.model.max_positions

    @property
    def draft(self) -> Int8Draft | None:
        """None: a draft's proposals could run past the window."""
        return None

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token (1,); logits for the next (1, V), sliding the window when it is full."""
        self.history.append(int(token))
        context = self.model.max_positions
        if self.position < context:
            return super().step(token)
        window = self.history[-(context // 2):]
        self.position = len(window)
        return self.model.lm_head(self._forward(torch.tensor([window], device=self.ids.device), 0)[:, -1])


class Seq2SeqSession:
    """An encoder-decoder model: the encoder runs once on ``input_ids`` (B, S); each of its rows is
    decoded ``copies`` times (beams, returned sequences) from ``decoder_ids`` (B·copies, L). The
    cross-attention keys/values are computed at the first step and cached."""

    draft = None  # speculative decoding is for decoder-only models

    def __init__(
        self,
        model: EncoderDecoderModel,
        input_ids: torch.Tensor,
        input_mask: torch.Tensor | None,
        decoder_ids: torch.Tensor,
        max_new_tokens: int,
        copies: int = 1,
    ):
        check_length(model, decoder_ids.size(1) + max_new_tokens)
        self.model, _ = decoding_model(model)
        memory = self.model.encode(input_ids, input_mask)
        self.memory = memory.repeat_interleave(copies, dim=model.memory_batch_dim)  # one per row
        self.memory_mask = input_mask.repeat_interleave(copies, dim=0) if input_mask is not None else None
        self.ids = decoder_ids
        self.cache = self.model.new_cache(decoder_ids.size(0), decoder_ids.size(1) + max_new_tokens)
        self.position = 0

    def _decode(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        return self.model.decode(ids, self.memory, self.memory_mask, self.cache, pos)[:, -1]

    def prefill(self) -> torch.Tensor:
        self.position = self.ids.size(1)
        return self._decode(self.ids, 0)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        pos = self.position
        self.position = pos + 1
        return self._decode(token[:, None], pos)

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows ``index`` of before (beams never leave their input, so the memory stays)."""
        if not bool((index == torch.arange(index.numel(), device=index.device)).all()):
            self.cache.reorder(index, self.position)
