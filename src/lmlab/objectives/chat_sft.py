"""Chat supervised fine-tuning: a conversation (OpenAI ``messages``) rendered with the tokenizer's
chat template, labelled on the assistant's tokens only.

The template is rendered incrementally: for each assistant message, the conversation before it
with the generation prompt (``<|assistant|>`` or whatever the template opens a reply with), then
with the message itself; the difference is the reply, its content and end-of-turn token
(whitespace the template writes after that token is not a target). The rendered text is cut at
those boundaries and each piece encoded on its own, so no token straddles a reply's edge.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX
from lmlab.tokenizers.base import Tokenizer
from lmlab.tokenizers.chat_template import ChatTemplateMixin

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
ASSISTANT = "assistant"


def chat_example(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
    """(ids, labels) of one conversation: ``labels[i]`` is ``ids[i]`` on the assistant replies
    (content + end-of-turn token) and IGNORE_INDEX elsewhere. Labels are aligned with the ids;
    shift them for next-token prediction as :func:`~lmlab.objectives.causal_lm_batch` does."""
    if not isinstance(tokenizer, ChatTemplateMixin):
        raise LmlabError(f"a {type(tokenizer).__name__} has no chat template; load a chat model's tokenizer")
    check_messages(messages)
    ids: list[int] = []
    labels: list[int] = []
    for text, is_reply in rendered_pieces(tokenizer, messages):
        piece = tokenizer.encode(text)
        ids += piece
        labels += piece if is_reply else [IGNORE_INDEX] * len(piece)
    return ids, labels


def check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """One-line errors, naming the message index, for what a chat template cannot render."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise LmlabError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise LmlabError(f"message {index} is not an object with 'role' and 'content'")
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise LmlabError(f"message {index} has no {' or '.join(map(repr, missing))}; each message needs role and content")
        if message["role"] not in CHAT_ROLES:
            raise LmlabError(f"message {index} has role {message['role']!r}; roles: {', '.join(CHAT_ROLES)}")
        if not isinstance(message["content"], str):
            raise LmlabError(f"message {index}'s content is not a string")
    if not any(message["role"] == ASSISTANT for message in messages):
        raise LmlabError("the conversation has no assistant message; chat fine-tuning learns the assistant's replies")


def rendered_pieces(tokenizer: ChatTemplateMixin, messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive (text, is_assistant_reply) pieces."""
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    pieces: list[tuple[str, bool]] = []
    done = 0  # characters of ``full`` already in pieces
    for index, message in enumerate(messages):
        if message["role"] != ASSISTANT:
            continue
        start = len(_rendered_prefix(tokenizer, messages, index, full, add_generation_prompt=True))
        with_reply = _rendered_prefix(tokenizer, messages, index + 1, full, add_generation_prompt=False)
        end = max(start, len(with_reply.rstrip()))  # the reply ends with its end-of-turn token
        pieces += [(full[done:start], False), (full[start:end], True)]
        done = end
    pieces.append((full[done:], False))
    return [(text, is_reply) for text, is_reply in pieces if text]


def _rendered_prefix(
    tokenizer: ChatTemplateMixin, messages: Sequence[Mapping[str, Any]], count: int, full: str, add_generation_prompt: bool
) -> str:
    """The first ``count`` messages rendered, checked to be how ``full`` begins."""
    text = tokenizer.apply_chat_template(messages[:count], add_generation_prompt=add_generation_prompt)
    if not full.startswith(text):
        raise LmlabError(
            f"the chat template renders messages 0..{count - 1} differently inside the whole conversation, "
            "so the assistant's tokens cannot be found; use a template that renders turns in order"
        )
    return text
