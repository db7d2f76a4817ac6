"""Recipe ``decoding`` end to end on a tiny random GPT-2: every arm's text and log-probability
(checked against a float64 recomputation from ``transformers``' logits), the greedy text and the
top-5 table against ``transformers`` itself, n-gram blocking, the figure and the bad inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny_models

from lmlab.errors import LmlabError  # noqa: E402
from lmlab.recipes import run_recipe  # noqa: E402
from lmlab.recipes.decoding import ALTERNATIVES, ARMS, FIGURE, FIGURE_BARS, FIGURE_TEMPERATURES  # noqa: E402
from lmlab.viz.probability_plots import figure_size  # noqa: E402
from tiny_models import gpt2_dir  # noqa: E402

transformers = pytest.importorskip("transformers")
PROMPT = "w3 w7 w1 w9"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict, Path]:
    tmp = tmp_path_factory.mktemp("decoding")
    model = gpt2_dir(tmp / "gpt2")
    prompt = tmp / "prompt.txt"
    prompt.write_text(PROMPT + "\n", encoding="utf-8")
    report = run_recipe("decoding", tmp / "out", budget="small", data=prompt, model=str(model), seed=3,
                        echo=lambda line: None)
    return report, json.loads((tmp / "out" / "results.json").read_text()), model


def reference_model(model_dir: Path):
    return transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval().double()


def test_every_arm_is_reported_with_its_log_probability(finished):
    report, results, model_dir = finished
    assert list(results["arms"]) == list(ARMS)
    reference = reference_model(model_dir)
    prompt_ids = results["prompt_ids"]
    for arm, result in results["arms"].items():
        ids = torch.tensor([prompt_ids + result["new_ids"]])
        with torch.no_grad():
            logp = reference(ids).logits[0, :-1].log_softmax(-1)  # (T - 1, V) float64
        expected = logp[len(prompt_ids) - 1:].gather(-1, ids[0, len(prompt_ids):, None]).sum()
        assert result["logprob"] == pytest.approx(float(expected), abs=1e-4), arm
        assert result["new_tokens"] == 24  # the small budget, no end-of-sequence token in this vocabulary
    text = report.read_text()
    assert text.index("| arm |") < text.index("## Texts") < text.index("## Greedy search") < text.index("## Reproduce")
    assert all(f"**{arm}**" in text for arm in ARMS)


def test_greedy_and_its_top_5_table_match_transformers(finished):
    _, results, model_dir = finished
    reference = reference_model(model_dir)
    prompt_ids = results["prompt_ids"]
    expected = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False,
                                  pad_token_id=0)[0, len(prompt_ids):].tolist()
    assert results["arms"]["greedy"]["new_ids"] == expected
    rows = results["greedy_alternatives"]
    for step, row in enumerate(rows):
        assert row["context"] == prompt_ids + expected[:step]
        with torch.no_grad():
            probs = reference(torch.tensor([row["context"]])).logits[0, -1].softmax(-1)
        top = probs.topk(ALTERNATIVES)
        assert [c["id"] for c in row["choices"]] == top.indices.tolist()
        assert [c["prob"] for c in row["choices"]] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_beam_search_with_blocking_repeats_no_bigram(finished):
    _, results, _ = finished
    sequence = results["prompt_ids"] + results["arms"]["beam-no-repeat"]["new_ids"]
    bigrams = list(zip(sequence, sequence[1:]))
    assert len(bigrams) == len(set(bigrams))
    # beam search finds a sequence at least as likely as greedy's here (same length, no EOS)
    assert results["arms"]["beam"]["logprob"] >= results["arms"]["greedy"]["logprob"] - 1e-6


def test_the_next_token_figure_and_its_numbers(finished):
    report, results, _ = finished
    with Image.open(report.parent / FIGURE) as image:
        assert image.size == figure_size(len(FIGURE_TEMPERATURES), min(FIGURE_BARS, 64))
    numbers = json.loads((report.parent / FIGURE).with_suffix(".json").read_text())
    assert [b["temperature"] for b in numbers["temperatures"]] == FIGURE_TEMPERATURES
    assert numbers["cumulative"]["top_k_kept"] == 50 and results["next_token"] == {
        k: v for k, v in numbers.items() if k != "prompt"}


def test_resume_reads_the_finished_arms_back(finished):
    report, results, model_dir = finished
    again = run_recipe("decoding", report.parent, budget="small", data=report.parent.parent / "prompt.txt",
                       model=str(model_dir), seed=3, resume=True, echo=lambda line: None)
    assert json.loads((again.parent / "results.json").read_text())["arms"] == results["arms"]


def test_bad_inputs_are_one_line(finished, tmp_path):
    _, _, model_dir = finished
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(LmlabError, match="is empty"):
        run_recipe("decoding", tmp_path / "a", data=empty, model=str(model_dir), echo=lambda line: None)
    from tiny_models import sentence_encoder_dir

    encoder = sentence_encoder_dir(tmp_path / "bert")
    with pytest.raises(LmlabError, match="needs a decoder-only"):
        run_recipe("decoding", tmp_path / "b", model=str(encoder), echo=lambda line: None)



@pytest.mark.parametrize("arm", ["greedy", "beam-no-repeat", "top-k-50"])
def test_the_reproduce_command_decodes_the_same_text(finished, arm, capsys):
    import shlex

    from lmlab.cli import main

    report, results, _ = finished
    command = results["commands"][arm]
    assert command in report.read_text()
    assert main(shlex.split(command)[1:]) == 0
    out = capsys.readouterr().out
    assert results["arms"][arm]["text"] in out
    assert f"log-probability: {results['arms'][arm]['logprob']:.4f} over 24 tokens" in out
