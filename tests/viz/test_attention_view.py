"""The attention views in a real browser (headless Chromium through Selenium): select a layer,
toggle a head, hover a token, open a model-view map and the neuron view, read what changed in the
DOM, and check the page escapes token text (no script from a token runs).

``LMLAB_UPDATE_DOCS_IMAGES=1`` also saves the head-view and model-view screenshots the README
shows (docs/images/attention-head-view.png, attention-model-view.png)."""

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from attention_models import HOSTILE, bart_dir, embedded_data, gpt2_dir, gpt2_queries_keys, make_view  # noqa: E402
from browser import browser  # noqa: E402,F401  (the module-scoped fixture)
from tiny_models import bert_mlm_dir  # noqa: E402

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
HANG_GUARD_S = 3600  # only catches a hung page; never a limit on how long it may take
RECORD_ALERTS = "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"


def by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def hover(driver, element):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(element).perform()


def select(driver, select_id, value):
    from selenium.webdriver.support.ui import Select

    Select(by_css(driver, f"#{select_id}")[0]).select_by_value(value)


def drawn_lines(driver) -> dict[tuple[int, int, int], float]:
    """(head, query, key) → opacity of every line the head view draws."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#head-svg line.attention')).map(function (l) {"
        " return [Number(l.dataset.head), Number(l.dataset.query), Number(l.dataset.key),"
        " Number(l.getAttribute('stroke-opacity'))]; });")
    return {(h, q, k): w for h, q, k, w in rows}


def screenshot(element, name: str):
    """The element's screenshot as a Pillow image, checked not to be one flat colour; saved to
    docs/images when LMLAB_UPDATE_DOCS_IMAGES=1."""
    from PIL import Image

    png = element.screenshot_as_png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width > 100 and image.height > 100
    assert len(image.getcolors(maxcolors=1 << 20)) > 10, f"{name} looks blank"
    if os.environ.get("LMLAB_UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        (DOCS_IMAGES / name).write_bytes(png)
    return image


def test_head_model_and_neuron_views_respond(browser, tmp_path):
    model_dir = gpt2_dir(tmp_path / "gpt2")
    page = tmp_path / "view.html"
    text = "w1 w7 w3 w9 w4"
    data = make_view(model_dir, page, "--text", text, "--generate", "3")
    browser.get(page.as_uri())
    weights = data["stacks"][0]["weights"]
    n_tokens = len(data["tokens"]["decoder"])
    assert len(by_css(browser, "text.token.query.generated")) == 3

    # the layer selector: the lines drawn are layer 1's weights, for both heads
    select(browser, "layer-select", "1")
    lines = drawn_lines(browser)
    expected = {(h, q, k): w for h in range(2) for q, row in enumerate(weights[1][h]) for k, w in enumerate(row)
                if w >= 0.001}
    assert lines.keys() == expected.keys()
    assert max(abs(lines[key] - expected[key]) for key in lines) < 1e-3

    # toggling head 1 off removes its lines and marks its button
    by_css(browser, '#head-toggles button[data-head="1"]')[0].click()
    assert by_css(browser, '#head-toggles button[data-head="1"]')[0].get_attribute("aria-pressed") == "false"
    assert {h for h, _, _ in drawn_lines(browser)} == {0}

    # hovering token 2 highlights exactly the lines it sends and receives
    hover(browser, by_css(browser, 'text.token.query[data-index="2"]')[0])
    highlighted = browser.execute_script(
        "return Array.from(document.querySelectorAll('#head-svg line.highlighted'))"
        ".map(function (l) { return [Number(l.dataset.query), Number(l.dataset.key)]; });")
    mine = {(q, k) for (h, q, k) in drawn_lines(browser) if 2 in (q, k)}
    assert highlighted and {tuple(pair) for pair in highlighted} == mine
    assert len(by_css(browser, "#head-svg line.dimmed")) == len(drawn_lines(browser)) - len(mine)
    by_css(browser, '#head-toggles button[data-head="1"]')[0].click()  # both heads again, for the picture
    screenshot(by_css(browser, "#head-view")[0], "attention-head-view.png")

    # the model view: clicking layer 1, head 0 opens it large
    by_css(browser, '#view-tabs button[data-view="model"]')[0].click()
    assert len(by_css(browser, ".model-cell")) == 4
    by_css(browser, '.model-cell[data-layer="1"][data-head="0"]')[0].click()
    assert by_css(browser, "#model-zoom")[0].is_displayed()
    assert "layer 1, head 0" in by_css(browser, "#model-zoom-title")[0].text
    assert by_css(browser, ".model-cell.selected")[0].get_attribute("data-layer") == "1"
    screenshot(by_css(browser, "#model-view")[0], "attention-model-view.png")

    # the neuron view: q·k/√d for each key equals a float64 recomputation from transformers' q and k
    by_css(browser, '#view-tabs button[data-view="head"]')[0].click()
    select(browser, "layer-select", "1")
    by_css(browser, 'text.token.query[data-index="4"]')[0].click()
    assert by_css(browser, "#neuron-view")[0].is_displayed()
    assert by_css(browser, "#neuron-query")[0].get_attribute("value") == "4"
    shown = [float(cell.get_attribute("data-value")) for cell in by_css(browser, "#neuron-table td.dot")]
    q, k = gpt2_queries_keys(model_dir, data["ids"]["decoder"])[1]
    expected_dots = (k[0] @ q[0, 4] / math.sqrt(q.size(-1))).numpy()  # head 0, query 4, every key
    assert len(shown) == n_tokens
    np.testing.assert_allclose(shown, expected_dots, atol=1e-4)
    softmax = [float(cell.get_attribute("data-value")) for cell in by_css(browser, "#neuron-table td.softmax")]
    np.testing.assert_allclose(softmax, weights[1][0][4], atol=1e-6)


def test_encoder_decoder_selector_shows_cross_attention(browser, tmp_path):
    page = tmp_path / "view.html"
    data = make_view(bart_dir(tmp_path / "bart"), page, "--text", "w1 w2 w3 w4", "--text-b", "w5 w6", "--view", "model")
    browser.get(page.as_uri())
    assert by_css(browser, "#model-view")[0].is_displayed()
    options = [o.text for o in by_css(browser, "#stack-select option")]
    assert options == ["Encoder", "Decoder", "Cross"]
    select(browser, "stack-select", "2")
    by_css(browser, '#view-tabs button[data-view="head"]')[0].click()
    queries = [t.text for t in by_css(browser, "text.token.query")]
    keys = [t.text for t in by_css(browser, "text.token.key")]
    assert queries == data["tokens"]["decoder"] and keys == data["tokens"]["encoder"]
    cross = data["stacks"][2]["weights"][0]
    assert drawn_lines(browser).keys() == {(h, q, k) for h in range(2) for q, row in enumerate(cross[h])
                                           for k, w in enumerate(row) if w >= 0.001}


def test_sentence_pair_boundary_and_filter(browser, tmp_path):
    page = tmp_path / "view.html"
    data = make_view(bert_mlm_dir(tmp_path / "bert"), page, "--text", "the world is", "--text-b", "a fact")
    boundary = data["segment_b_from"]["encoder"]
    browser.get(page.as_uri())
    assert len(by_css(browser, "#head-svg line.segment-boundary")) == 2
    assert len(by_css(browser, "text.token.query.segment-b")) == len(data["tokens"]["encoder"]) - boundary
    select(browser, "pair-filter", "ab")
    pairs = {(q, k) for _, q, k in drawn_lines(browser)}
    assert pairs and all(q < boundary <= k for q, k in pairs)
    select(browser, "pair-filter", "ba")
    pairs = {(q, k) for _, q, k in drawn_lines(browser)}
    assert pairs and all(k < boundary <= q for q, k in pairs)


def test_hostile_token_renders_as_text_and_runs_nothing(browser, tmp_path):
    page = tmp_path / "view.html"
    make_view(gpt2_dir(tmp_path / "gpt2"), page, "--text", f"w1 {HOSTILE} w2")
    assert HOSTILE not in page.read_text(encoding="utf-8")  # escaped in the embedded JSON too
    assert embedded_data(page)["tokens"]["decoder"][1] == HOSTILE
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_ALERTS})
    for view in ("head", "model", "neuron"):
        browser.get(page.as_uri())
        by_css(browser, f'#view-tabs button[data-view="{view}"]')[0].click()
        if view == "model":
            by_css(browser, ".model-cell")[0].click()
        assert browser.execute_script("return window.__alerts") == []
        assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    browser.get(page.as_uri())
    texts = browser.execute_script(
        "return Array.from(document.querySelectorAll('text.token.query')).map(function (t) { return t.textContent; });")
    assert texts[1] == HOSTILE
    # the check can fail: the same text put in as HTML does run its script
    browser.set_script_timeout(HANG_GUARD_S)
    alerts = browser.execute_async_script(
        "var done = arguments[arguments.length - 1], record = window.alert;"
        "window.alert = function (m) { record(m); done(window.__alerts); };"
        "document.body.insertAdjacentHTML('beforeend', arguments[0]);", HOSTILE)
    assert alerts == ["1"]
