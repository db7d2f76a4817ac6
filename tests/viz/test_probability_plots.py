"""``lmlab probs``: next-token distributions through generation's processors, checked against a
float64 softmax of the logits ``transformers`` computes for the same tiny GPT-2."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from PIL import Image

from lmlab.cli import main
from lmlab.generation.next_token import next_token_distributions, next_token_logits
from lmlab.training.run import load_run
from lmlab.viz.probability_plots import figure_size

transformers = pytest.importorskip("transformers")
PROMPT = "w1 w2 w3"


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def reference_logits(model_dir, prompt_ids: list[int]) -> torch.Tensor:
    """The (V,) float64 next-token logits of the Hugging Face model itself."""
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([prompt_ids])).logits[0, -1].double()


def test_distributions_match_a_float64_softmax(tiny_gpt2):
    loaded = load_run(tiny_gpt2, print)
    ids = loaded.tokenizer.encode(PROMPT)
    logits = next_token_logits(loaded.model, ids)
    expected = reference_logits(tiny_gpt2, ids)
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=1e-4)
    report = next_token_distributions(logits, [0.5, 1.0, 2.0], top_k=5, top_p=0.3)
    for temperature, probs in report.by_temperature.items():
        torch.testing.assert_close(probs.double(), (expected / temperature).softmax(-1), atol=1e-6, rtol=1e-5)
    assert report.top_k_kept == 5
    ranked = expected.softmax(-1).sort(descending=True).values.cumsum(0)
    assert report.top_p_kept == int((ranked < 0.3).sum()) + 1  # the fewest tokens reaching p


def test_cli_writes_the_figure_and_its_numbers(tiny_gpt2, tmp_path):
    out = tmp_path / "probs.png"
    code, stdout, err = run("probs", tiny_gpt2, "--prompt", PROMPT, "--out", out, "--temperatures", "0.5,2",
                            "--top-k", "10", "--top-p", "0.5", "--top-n", "8")
    assert code == 0, err
    assert stdout.startswith("temperature 0.5:")
    with Image.open(out) as image:
        assert image.size == figure_size(2, 8)
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert [bar["temperature"] for bar in numbers["temperatures"]] == [0.5, 2.0]
    ids = load_run(tiny_gpt2, print).tokenizer.encode(PROMPT)
    expected = (reference_logits(tiny_gpt2, ids) / 2.0).softmax(-1)
    bar = numbers["temperatures"][1]
    assert bar["ids"] == expected.topk(8).indices.tolist()
    assert bar["probs"] == pytest.approx(expected.topk(8).values.tolist(), abs=1e-6)
    cumulative = numbers["cumulative"]
    assert (cumulative["top_k"], cumulative["top_k_kept"], cumulative["top_p"]) == (10, 10, 0.5)
    assert cumulative["cumulative"][-1] == pytest.approx(1.0, abs=1e-6)  # the whole vocabulary fits (64 tokens)


@pytest.mark.parametrize(("flags", "says"), [
    (("--temperatures", "0,1"), "temperature must be > 0"),
    (("--temperatures", "hot"), "comma-separated numbers"),
    (("--top-p", "1.5"), "top-p must be in (0, 1]"),
    (("--prompt", ""), "the prompt is empty"),
])
def test_bad_settings_are_one_line(tiny_gpt2, tmp_path, flags, says):
    argv = ["probs", tiny_gpt2, "--prompt", PROMPT, "--out", tmp_path / "bad.png", *flags]
    code, _, err = run(*argv)
    assert code == 2 and err.count("\n") == 1 and says in err, err
