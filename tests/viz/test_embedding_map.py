"""``lmlab embeddings``: PCA maps (checked against scikit-learn), cosine neighbours, the mean
embedding of a word of several tokens (against the ``transformers`` model's own table), the PNG
and the self-contained HTML page driven in a real browser (headless Chromium through Selenium)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from PIL import Image

from lmlab.cli import main
from lmlab.interop.embeddings import nearest_neighbours, pca_2d, word_vectors
from lmlab.training.run import load_run
from lmlab.viz.embedding_map import PNG_SIZE
from browser import browser  # noqa: F401  (tests/browser.py: headless Chromium, skips or fails under CI=true)

transformers = pytest.importorskip("transformers")
HOSTILE = "<img src=x onerror=window.__pwned=1>"


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_pca_matches_scikit_learn_up_to_each_axis_sign():
    decomposition = pytest.importorskip("sklearn.decomposition")
    vectors = torch.randn(12, 7, generator=torch.Generator().manual_seed(0))
    ours = pca_2d(vectors).numpy()
    theirs = decomposition.PCA(n_components=2).fit_transform(vectors.double().numpy())
    for axis in range(2):
        sign = 1.0 if (ours[:, axis] * theirs[:, axis]).sum() > 0 else -1.0
        assert ours[:, axis] == pytest.approx(sign * theirs[:, axis], abs=1e-9)


def test_two_points_have_one_component():
    coords = pca_2d(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    assert coords.shape == (2, 2) and torch.all(coords[:, 1] == 0)
    assert float(coords[0, 0] - coords[1, 0]) == pytest.approx(8 ** 0.5)


def test_neighbours_are_the_most_cosine_similar_others():
    pairwise = pytest.importorskip("sklearn.metrics.pairwise")
    vectors = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    similarity = pairwise.cosine_similarity(vectors.double().numpy())
    for i, row in enumerate(nearest_neighbours(vectors, 3)):
        others = sorted((j for j in range(6) if j != i), key=lambda j: -similarity[i, j])[:3]
        assert [j for j, _ in row] == others
        assert [s for _, s in row] == pytest.approx([similarity[i, j] for j in others], abs=1e-12)


def test_a_word_of_several_tokens_is_the_mean_of_its_token_embeddings(tiny_gpt2):
    loaded = load_run(tiny_gpt2, print)
    table = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2).get_input_embeddings().weight.detach()
    got = word_vectors(loaded.model, loaded.tokenizer, ["w3", "w4 w7 w9"])
    ids = loaded.tokenizer.encode("w4 w7 w9")
    assert len(ids) == 3
    torch.testing.assert_close(got[0], table[loaded.tokenizer.encode("w3")[0]])
    torch.testing.assert_close(got[1], table[ids].mean(dim=0))


def test_png_map_and_its_numbers(tiny_gpt2, tmp_path):
    out = tmp_path / "map.png"
    code, stdout, err = run("embeddings", tiny_gpt2, "--words", "w1", "w2", "w3", "w4 w5", "--out", out,
                            "--neighbours", "2")
    assert code == 0, err
    with Image.open(out) as image:
        assert image.size == PNG_SIZE
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["kind"] == "token"
    assert [p["label"] for p in numbers["points"]] == ["w1", "w2", "w3", "w4 w5"]
    assert all(len(row) == 2 for row in numbers["neighbours"])
    assert stdout.splitlines()[0].startswith("w1\t" + numbers["neighbours"][0][0]["label"])


def test_a_sentence_encoder_maps_texts(tiny_sentence_encoder, tmp_path):
    from lmlab.interop.embeddings import load_sentence_encoder

    texts = ["w1 w2 w3", "w4", "w5 w6"]
    out = tmp_path / "texts.png"
    code, _, err = run("embeddings", tiny_sentence_encoder, "--words", *texts, "--out", out)
    assert code == 0, err
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["kind"] == "text"
    vectors = load_sentence_encoder(tiny_sentence_encoder).encode(texts)  # checked against transformers in tests/interop
    expected = pca_2d(vectors).flatten().tolist()
    assert [c for p in numbers["points"] for c in (p["x"], p["y"])] == pytest.approx(expected, abs=1e-9)


def test_fewer_than_two_words_is_an_error(tiny_gpt2, tmp_path):
    code, _, err = run("embeddings", tiny_gpt2, "--words", "w1", "--out", tmp_path / "one.png")
    assert code == 2 and err.count("\n") == 1 and "at least two words" in err


# ------------------------------------------------------------------------------- in a browser
def test_html_map_zooms_shows_labels_on_hover_and_escapes_them(tiny_gpt2, tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out = tmp_path / "map.html"
    code, _, err = run("embeddings", tiny_gpt2, "--words", "w1", "w2", HOSTILE, "w4 w5", "--out", out)
    assert code == 0, err
    page = out.read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<img" not in page  # the label sits in the page as escaped JSON only
    browser.get(out.as_uri())
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#view .label")]
    assert labels == ["w1", "w2", HOSTILE, "w4 w5"]  # shown as text
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.execute_script("return window.__pwned === undefined")

    dots = browser.find_elements(By.CSS_SELECTOR, "#view .point")
    ActionChains(browser).move_to_element(dots[2]).perform()
    tooltip = browser.find_element(By.ID, "tooltip")
    assert tooltip.is_displayed() and tooltip.text.startswith(HOSTILE)
    assert "hovered" in dots[2].get_attribute("class")

    svg = browser.find_element(By.ID, "map")
    assert svg.get_attribute("data-scale") == "1.0000"
    browser.find_element(By.ID, "zoom-in").click()
    assert svg.get_attribute("data-scale") == "1.5000"
    browser.execute_script(  # a wheel turn upwards over the map's centre
        "const box = arguments[0].getBoundingClientRect();"
        "arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -100, bubbles: true, cancelable: true,"
        " clientX: box.left + box.width / 2, clientY: box.top + box.height / 2}));", svg)
    assert float(svg.get_attribute("data-scale")) == pytest.approx(1.8)
    rows = browser.find_elements(By.CSS_SELECTOR, "#neighbours tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["w1", "w2", HOSTILE, "w4 w5"]
