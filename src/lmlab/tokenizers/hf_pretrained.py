"""The ``hf-pretrained`` tokenizer kind and the backend set-up shared by its loaders.

:class:`PretrainedHFTokenizer` is a ``tokenizers`` pipeline with special-token roles and a chat
template; :func:`add_special_tokens` and :func:`bos_eos_template` prepare such a pipeline the way
``transformers`` does, for both Hugging Face directories and GGUF metadata.
"""

from __future__ import annotations

from typing import Any, Mapping

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFBackend
from tokenizers import processors

from lmlab.tokenizers.base import register_tokenizer
from lmlab.tokenizers.chat_template import ChatTemplateMixin
from lmlab.tokenizers.hf import HFTokenizer


@register_tokenizer("hf-pretrained")
class PretrainedHFTokenizer(ChatTemplateMixin, HFTokenizer):
    """A pretrained ``tokenizers`` pipeline with its special-token roles and chat template."""

    def __init__(
        self,
        backend: HFBackend,
        roles: Mapping[str, str] | None = None,
        chat_template: str | None = None,
    ):
        super().__init__(backend, roles)
        self.chat_template = chat_template

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "chat_template": self.chat_template}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainedHFTokenizer":
        plain = HFTokenizer.from_dict(data)
        return cls(plain.backend, plain.roles, data.get("chat_template"))


def add_special_tokens(
    backend: HFBackend, roles: Mapping[str, str], config: Mapping[str, Any]
) -> None:
    """Register the config's added tokens and every role's token with the backend, as
    ``transformers`` does, so that they are matched whole in text (ids of known tokens are kept)."""
    existing = {token.content for token in backend.get_added_tokens_decoder().values()}
    declared = config.get("added_tokens_decoder") or {}
    added = [
        AddedToken(
            entry["content"],
            special=entry.get("special", True),
            normalized=entry.get("normalized", False),
            lstrip=entry.get("lstrip", False),
            rstrip=entry.get("rstrip", False),
            single_word=entry.get("single_word", False),
        )
        for _, entry in sorted(declared.items(), key=lambda item: int(item[0]))
        if entry.get("content") not in existing
    ]
    existing |= {token.content for token in added}
    added += [
        AddedToken(token, special=True, normalized=False)
        for token in dict.fromkeys(roles.values())
        if token not in existing
    ]
    backend.add_tokens([token for token in added if not token.special])
    backend.add_special_tokens([token for token in added if token.special])


def bos_eos_template(
    backend: HFBackend, roles: Mapping[str, str], add_bos: bool, add_eos: bool
) -> None:
    """A post-processor wrapping texts in bos/eos as asked (``add_bos_token``/``add_eos_token``)."""
    bos = roles.get("bos") if add_bos else None
    eos = roles.get("eos") if add_eos else None

    def wrapped(sequence: str, type_id: int) -> list[str]:
        return [f"{token}:{type_id}" for token in (bos, sequence, eos) if token is not None]

    backend.post_processor = processors.TemplateProcessing(
        single=" ".join(wrapped("$A", 0)),
        pair=" ".join(wrapped("$A", 0) + wrapped("$B", 1)),
        special_tokens=[
            (token, backend.token_to_id(token)) for token in dict.fromkeys((bos, eos)) if token
        ],
    )
