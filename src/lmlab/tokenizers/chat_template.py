"""Hugging Face chat templates (Jinja), rendered in a sandbox as ``transformers`` does."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmlab.errors import LmlabError
from lmlab.tokenizers.hf import first_line

def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """Render a Hugging Face chat template (Jinja) in a sandbox, as ``transformers`` does.

    ``variables`` (e.g. ``bos_token``, ``tools``) are visible to the template; templates may
    call ``raise_exception(message)`` and ``strftime_now(format)`` and use the ``tojson`` filter.
    """

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return environment.from_string(template).render(
            messages=[dict(message) for message in messages],
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as exc:
        raise LmlabError(
            f"the chat template failed: {first_line(exc)}; check the messages"
        ) from exc


# Tokens that chat templates put after each turn (ChatML, Llama 3, Phi-3, Gemma); a reply ends at one.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class ChatTemplateMixin:
    """Adds ``chat_template``, :meth:`apply_chat_template` and :meth:`end_of_turn_ids` to a
    tokenizer with ``roles``."""

    chat_template: str | None
    roles: dict[str, str]

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """The conversation rendered by the model's chat template (special tokens as strings)."""
        if self.chat_template is None:
            raise LmlabError(
                "this tokenizer has no chat template; load a chat model's tokenizer or set one"
            )
        tokens = {f"{role}_token": token for role, token in self.roles.items()}
        return render_chat_template(
            self.chat_template, messages, add_generation_prompt, **{**tokens, **variables}
        )

    def end_of_turn_ids(self) -> tuple[int, ...]:
        """The ids that end an assistant's reply: EOS and the end-of-turn tokens of
        :data:`END_OF_TURN_TOKENS` that the vocabulary has."""
        ids = [self.special_tokens.get("eos")] + [self.token_to_id(token) for token in END_OF_TURN_TOKENS]
        return tuple(dict.fromkeys(i for i in ids if i is not None))
