"""The playground page (``GET /``) in headless Chromium: type a prompt, press Send, wait for the
streamed text (greedy, so it is what ``generate`` makes), hover a token and read its alternatives;
token text reaches the page as text, never as HTML."""

from __future__ import annotations

import json

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from browser import browser  # noqa: E402,F401  (the fixture)
from serving_helpers import HANG_GUARD_S, MODEL_NAME, TEXT, tiny_decoder  # noqa: E402

from lmlab.serving.app import create_app  # noqa: E402
from lmlab.serving.requests import RequestHandle, TokenEvent  # noqa: E402
from lmlab.serving.server import BackgroundServer  # noqa: E402
from lmlab.tokenizers import CharTokenizer  # noqa: E402

PROMPT = "the lazy "
MAX_TOKENS = 12


def _wait(browser, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, HANG_GUARD_S, poll_frequency=0.05).until(condition, message=what)


def _generate_in_page(browser, url: str, prompt: str, settings: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url + "/")
    for field, value in settings.items():
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    browser.find_element(By.ID, "send").click()
    _wait(browser, lambda d: d.find_element(By.ID, "status").text.startswith("done"), "the stream to finish")


def test_streamed_text_coloured_tokens_and_alternatives_on_hover(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _generate_in_page(browser, server.url, PROMPT, {"temperature": "0", "max_tokens": str(MAX_TOKENS),
                                                   "top_logprobs": "3"})
    tokens = browser.find_elements(By.CSS_SELECTOR, "#output .token")
    assert "".join(t.get_attribute("textContent") for t in tokens) == server.greedy_text(PROMPT, MAX_TOKENS)
    assert browser.find_element(By.CSS_SELECTOR, "#output .prompt").get_attribute("textContent") == PROMPT
    first = tokens[0]
    assert first.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
    ActionChains(browser).move_to_element(first).perform()
    box = browser.find_element(By.ID, "alternatives")
    _wait(browser, lambda d: box.is_displayed(), "the alternatives to show")
    shown = [json.loads(row.find_element(By.CLASS_NAME, "alt-token").text)
             for row in box.find_elements(By.CLASS_NAME, "alt")]
    expected = httpx.post(server.url + "/v1/completions", json={
        "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "logprobs": 3}, timeout=HANG_GUARD_S).json()
    assert shown == list(expected["choices"][0]["logprobs"]["top_logprobs"][0])
    assert shown[0] == first.get_attribute("textContent")  # greedy: the chosen token is the best


MARKUP = "<b>bold</b><img src=x>"


class MarkupEngine:
    """An engine whose one token is :data:`MARKUP`."""

    def __init__(self, token: int):
        self.token = token

    def submit(self, request, on_event):
        on_event(TokenEvent(self.token, -0.1, [(self.token, -0.1)], "length"))
        return RequestHandle(0)

    def stats(self) -> dict:
        return {}


def test_token_text_is_never_parsed_as_html(browser):
    from selenium.webdriver.common.by import By

    model, _ = tiny_decoder()
    tokenizer = CharTokenizer(sorted(set(TEXT)), extra_tokens=[MARKUP])
    app = create_app(model, tokenizer, MarkupEngine(tokenizer.token_to_id(MARKUP)), model_name=MODEL_NAME)
    with BackgroundServer(app) as running:
        _generate_in_page(browser, running.url, "the", {"max_tokens": "1"})
    output = browser.find_element(By.ID, "output")
    assert [t.get_attribute("textContent") for t in output.find_elements(By.CSS_SELECTOR, ".token")] == [MARKUP]
    assert output.find_elements(By.CSS_SELECTOR, "b, img") == []
