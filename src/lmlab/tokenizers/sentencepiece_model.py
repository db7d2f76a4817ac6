"""The ``sentencepiece`` tokenizer kind: a SentencePiece model run by the ``sentencepiece`` package."""

from __future__ import annotations

import base64
import re
from typing import Any, Mapping, Sequence

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import Tokenizer, register_tokenizer
from lmlab.tokenizers.chat_template import ChatTemplateMixin
from lmlab.tokenizers.hf import first_line


def _sentencepiece_module() -> Any:
    """The ``sentencepiece`` package, or an error saying how to get it."""
    try:
        import sentencepiece
    except ImportError as exc:
        raise LmlabError(
            "this tokenizer is a SentencePiece model; install the sentencepiece package "
            "(pip install sentencepiece)"
        ) from exc
    return sentencepiece


@register_tokenizer("sentencepiece")
class SentencePieceTokenizer(ChatTemplateMixin, Tokenizer):
    """A SentencePiece model (``tokenizer.model`` / ``spiece.model``) run by ``sentencepiece``.

    Special-token strings in the text are kept whole, as ``transformers`` does; text after one
    gets no dummy-prefix space. ``add_special_tokens=True`` wraps a text in bos/eos as
    ``add_bos``/``add_eos`` say. The model bytes are stored in :meth:`to_dict`.

    Plain text encodes exactly as SentencePiece does. ``transformers``' converted Llama tokenizer
    differs from SentencePiece (and from this class) on text starting with whitespace: it does not
    add the dummy-prefix ``▁`` in front of an existing space.
    """

    def __init__(
        self,
        model: bytes,
        roles: Mapping[str, str] | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        chat_template: str | None = None,
    ):
        try:
            self.processor = _sentencepiece_module().SentencePieceProcessor(model_proto=model)
        except RuntimeError as exc:
            raise LmlabError(
                f"not a valid SentencePiece model ({first_line(exc)}); re-download it"
            ) from exc
        self.model = model
        self.roles = dict(self._default_roles() if roles is None else roles)
        unknown = {
            role: token for role, token in self.roles.items() if self.token_to_id(token) is None
        }
        if unknown:
            raise LmlabError(
                f"special tokens {unknown} are not in the SentencePiece vocabulary; fix the roles"
            )
        for role, flag in (("bos", add_bos), ("eos", add_eos)):
            if flag and role not in self.roles:
                raise LmlabError(
                    f"add_{role} is set but the tokenizer has no {role} token; name one in the roles"
                )
        self.add_bos, self.add_eos = add_bos, add_eos
        self.chat_template = chat_template
        self._special_pattern = _alternation(set(self.roles.values()))
        self._unk_piece = self.processor.id_to_piece(self.processor.unk_id())
        self._unk_prefix_length = len(self.processor.encode(self._unk_piece))
        self._dummy_prefix = self.processor.encode("a", out_type=str)[0].startswith("▁")

    def _default_roles(self) -> dict[str, str]:
        """The roles the model itself declares (its bos/eos/unk/pad pieces)."""
        ids = {
            "bos": self.processor.bos_id(),
            "eos": self.processor.eos_id(),
            "unk": self.processor.unk_id(),
            "pad": self.processor.pad_id(),
        }
        return {role: self.processor.id_to_piece(i) for role, i in ids.items() if i >= 0}

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @property
    def special_tokens(self) -> dict[str, int]:
        return {role: self.processor.piece_to_id(token) for role, token in self.roles.items()}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text → ids; ``add_special_tokens`` adds bos/eos as the model's config asks."""
        ids: list[int] = []
        for position, part in enumerate(_split_on(self._special_pattern, text)):
            if position % 2:  # odd parts are the special tokens the text was cut at
                ids.append(self.processor.piece_to_id(part))
            elif part:
                ids.extend(self._encode_plain(part, first=position == 0))
        if add_special_tokens and self.add_bos:
            ids.insert(0, self.special_tokens["bos"])
        if add_special_tokens and self.add_eos:
            ids.append(self.special_tokens["eos"])
        return ids

    def _encode_plain(self, text: str, first: bool) -> list[int]:
        """Ids of text holding no special token. Only the text's first part gets the dummy-prefix
        space: a later part is encoded behind the unknown piece, whose ids are then dropped."""
        if first:
            return self.processor.encode(text)
        return self.processor.encode(self._unk_piece + text)[self._unk_prefix_length :]

    def decode_visible(self, ids: Sequence[int]) -> str:
        """Ids → text without the special tokens (the tokenizer's own ``skip_special_tokens``)."""
        return self.decode(ids, skip_special_tokens=True)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids → text; special tokens are written out unless ``skip_special_tokens``."""
        ids = self._checked(ids)
        special = set(self.special_tokens.values())
        if skip_special_tokens:
            return self.processor.decode([token_id for token_id in ids if token_id not in special])
        parts, run = [], []
        for token_id in ids:
            if token_id in special:
                parts += [
                    self._decode_run(run, first=not parts),
                    self.processor.id_to_piece(token_id),
                ]
                run = []
            else:
                run.append(token_id)
        return "".join(parts + [self._decode_run(run, first=not parts)])

    def _decode_run(self, run: list[int], first: bool) -> str:
        """Text of ids holding no special token. SentencePiece drops the space of a leading ``▁``
        (the dummy prefix); after a special token that space is real text, so it is kept."""
        text = self.processor.decode(run)
        if (
            run
            and not first
            and self._dummy_prefix
            and self.processor.id_to_piece(run[0]).startswith("▁")
        ):
            text = " " + text
        return text

    def _checked(self, ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise LmlabError(f"ids {bad[:10]} are outside the vocabulary (size {self.vocab_size})")
        return ids

    def token_to_id(self, token: str) -> int | None:
        token_id = self.processor.piece_to_id(token)
        return token_id if self.processor.id_to_piece(token_id) == token else None

    def id_to_token(self, token_id: int) -> str:
        return self.processor.id_to_piece(self._checked([token_id])[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": base64.b64encode(self.model).decode("ascii"),
            "roles": dict(self.roles),
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "chat_template": self.chat_template,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SentencePieceTokenizer":
        return cls(
            base64.b64decode(data["model"]),
            data.get("roles"),
            data.get("add_bos", False),
            data.get("add_eos", False),
            data.get("chat_template"),
        )


def _alternation(tokens: set[str]) -> re.Pattern[str] | None:
    """A regex matching any of ``tokens`` (longest first), or None for no tokens."""
    if not tokens:
        return None
    return re.compile(
        "(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")"
    )


def _split_on(pattern: re.Pattern[str] | None, text: str) -> list[str]:
    """``text`` cut around every match of ``pattern`` (matches kept as their own parts)."""
    return [text] if pattern is None else pattern.split(text)
