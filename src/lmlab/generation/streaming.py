"""Streaming text: decoded pieces as tokens arrive, safe for byte-level BPE, with stop strings."""

from __future__ import annotations

from typing import Callable, Iterator

from torch import nn

from lmlab.generation.config import GenerationConfig
from lmlab.generation.loop import stream_tokens

REPLACEMENT = "\ufffd"  # what a decoder makes of an incomplete UTF-8 sequence


class TextStreamer:
    """Turns new token ids into new text. Decodes everything so far and emits only the stable new
    suffix: nothing while the text ends in a partial UTF-8 character, and (with stop strings)
    nothing that could still be the start of one."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()):
        self.decode = decode
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already given out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one token; the text that became final (maybe empty)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.decode(self.ids)
        for stop in self.stop:
            at = text.find(stop, max(0, self.emitted - len(stop) + 1))
            if at >= 0:
                self.stopped = True
                return self._emit(text, at)
        end = len(text)
        while end > self.emitted and text[end - 1] == REPLACEMENT:
            end -= 1
        for stop in self.stop:  # hold back a suffix that may grow into a stop string
            for k in range(min(len(stop) - 1, end - self.emitted), 0, -1):
                if text[end - k:end] == stop[:k]:
                    end -= k
                    break
        return self._emit(text, end)

    def flush(self) -> str:
        """Whatever is left once generation ends."""
        return "" if self.stopped else self._emit(self.decode(self.ids), len(self.decode(self.ids)))

    def _emit(self, text: str, end: int) -> str:
        piece = text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece


def stream_text(
    model: nn.Module, decode: Callable[[list[int]], str], prompt: list[int], config: GenerationConfig
) -> Iterator[str]:
    """Yield pieces of generated text as they are produced; stops at ``config.stop`` strings
    (which are not yielded) and after EOS."""
    streamer = TextStreamer(decode, config.stop)
    for token in stream_tokens(model, prompt, config):
        piece = streamer.push(token)
        if piece:
            yield piece
        if streamer.stopped:
            return
    rest = streamer.flush()
    if rest:
        yield rest
