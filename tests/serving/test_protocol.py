"""Request checking without a server: what each body becomes, and the field each mistake names."""

from __future__ import annotations

import pytest

from lmlab.serving.protocol import ProtocolError, completion_request

HI = [{"role": "user", "content": "hi"}]


def test_a_completion_body_with_defaults():
    request = completion_request({"prompt": "the"}, chat=False)
    assert request.prompts == ["the"] and request.max_tokens == 16 and request.n == 1
    assert request.sampling.temperature == 1.0 and request.top_logprobs is None and request.stop == ()


def test_a_chat_body_with_text_parts_logprobs_and_max_completion_tokens():
    request = completion_request({
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "logprobs": True, "top_logprobs": 4, "max_completion_tokens": 9, "stop": "\n", "top_k": -1}, chat=True)
    assert request.messages[1] == {"role": "user", "content": "ab"}
    assert (request.top_logprobs, request.max_tokens, request.stop, request.sampling.top_k) == (4, 9, ("\n",), None)
    assert completion_request({"messages": HI}, chat=True).max_tokens is None  # chat: as many as fit


@pytest.mark.parametrize("body, field", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": HI, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": HI, "logprobs": 1}, "logprobs"),
    ({"messages": HI, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"messages": HI, "stop": ["a"] * 17}, "stop"),
    ({"messages": HI, "temperature": float("nan")}, "temperature"),
    ({"messages": HI, "frequency_penalty": -2.5}, "frequency_penalty"),
    ({"messages": HI, "n": True}, "n"),
])
def test_each_mistake_names_its_field(body, field):
    with pytest.raises(ProtocolError) as caught:
        completion_request(body, chat=True)
    assert caught.value.param == field and caught.value.status == 400
    assert field.split(".")[-1].split("[")[0] in caught.value.message


def test_a_body_that_is_not_an_object():
    with pytest.raises(ProtocolError, match="JSON object"):
        completion_request([1, 2], chat=False)
