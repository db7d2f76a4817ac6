"""The summarization recipe end to end on synthetic articles whose first three sentences are the
summary, with a tiny random GPT-2 (TL;DR arm) and tiny random BART and PEGASUS (fine-tuned arms):
every arm and ROUGE metric is in results.json, the figures equal rouge-score's scorer run on the
reported summaries, lead-3 is perfect, and bad inputs are one-line errors."""

import json
import random
import sys
import tarfile
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
pytest.importorskip("pysbd")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models

from tiny_models import bert_mlm_dir, t5_dir  # noqa: E402

from lmlab.errors import LmlabError  # noqa: E402
from lmlab.recipes import run_recipe  # noqa: E402
from lmlab.recipes.summarization import parse_story, read_examples, source_prefix_for  # noqa: E402

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
CONTENT = [f"w{i}" for i in range(30)]
CUE_WORDS = ["TL", ";", "DR", ":", "."]
ARM_SECONDS = 2.0


def word_tokenizer(folder, specials: list[str], roles: dict[str, str]):
    """A word-level ``tokenizer.json`` (punctuation split off) over the specials, CONTENT and CUE_WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [*specials, *CONTENT, *CUE_WORDS]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(specials)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(roles))
    return len(words)


def gpt2_dir(folder, positions: int = 128):
    vocab = word_tokenizer(folder, ["</s>", "<pad>", "<unk>"], {"eos_token": "</s>", "pad_token": "<pad>",
                                                               "unk_token": "<unk>"})
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def bart_dir(folder):
    vocab = word_tokenizer(folder, ["<s>", "<pad>", "</s>", "<unk>"], {"bos_token": "<s>", "eos_token": "</s>",
                                                                      "pad_token": "<pad>", "unk_token": "<unk>"})
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=0,
                                     eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
    transformers.BartForConditionalGeneration(config).save_pretrained(folder)
    return folder


def pegasus_dir(folder):
    vocab = word_tokenizer(folder, ["<pad>", "</s>", "<unk>"], {"eos_token": "</s>", "pad_token": "<pad>",
                                                               "unk_token": "<unk>"})
    torch.manual_seed(0)
    config = transformers.PegasusConfig(vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1,
                                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                        decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=0,
                                        eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=None)
    transformers.PegasusForConditionalGeneration(config).save_pretrained(folder)
    return folder


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(CONTENT) for _ in range(rng.randint(3, 5))) + "."


def articles(count: int, seed: int) -> list[dict]:
    """Six-sentence articles; the highlights are their first three sentences, one a line."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        sentences = [sentence(rng) for _ in range(6)]
        records.append({"article": " ".join(sentences), "highlights": "\n".join(sentences[:3]), "id": "x"})
    return records


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"gpt2": gpt2_dir(folder / "gpt2"), "bart": bart_dir(folder / "bart"),
            "pegasus": pegasus_dir(folder / "pegasus"), "bert": bert_mlm_dir(folder / "bert")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, models):
    """One small-budget recipe run with every arm; returns its output directory."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("recipe")
    data = write_jsonl(folder / "cnn.jsonl", articles(40, seed=0))
    out = folder / "out"
    run_recipe("summarization", out, budget="small", max_time=ARM_SECONDS, data=data, model=str(models["gpt2"]),
               extra_models=(str(models["bart"]), str(models["pegasus"])), echo=lambda _: None)
    return out


def split(out, name: str) -> list[dict]:
    """The records of the recipe's ``name`` split file."""
    return [json.loads(line) for line in (out / "splits" / f"{name}.jsonl").read_text().splitlines()]


def test_results_have_every_arm_and_rouge_metric(finished):
    results = json.loads((finished / "results.json").read_text())
    arms = results["arms"]
    assert list(arms) == ["lead-3", "tldr", "finetuned-bart", "finetuned-pegasus"]
    for arm in arms.values():
        assert set(ROUGE_TYPES) <= set(arm)
        assert len(arm["summaries"]) == results["splits"]["test"] == 8
    assert arms["finetuned-bart"]["steps"] >= 1 and arms["finetuned-pegasus"]["steps"] >= 1
    report = (finished / "report.md").read_text()
    assert "| finetuned-pegasus |" in report and "## Summaries beside the reference" in report
    assert "lmlab finetune" in report and "--task seq2seq" in report
    assert (finished / "curves.png").stat().st_size > 0 and "![curves](curves.png)" in report
    assert (finished / "arms" / "finetuned-bart.yaml").is_file()


def test_rouge_equals_rouge_score_on_the_reported_summaries(finished):
    references = [record["highlights"] for record in split(finished, "test")]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for name, arm in json.loads((finished / "results.json").read_text())["arms"].items():
        scores = [scorer.score(ref, summary) for ref, summary in zip(references, arm["summaries"])]
        for kind in ROUGE_TYPES:
            assert arm[kind] == pytest.approx(sum(s[kind].fmeasure for s in scores) / len(scores)), (name, kind)


def test_the_finetuned_arms_learn(finished):
    for arm in ("finetuned-bart", "finetuned-pegasus"):
        rows = [json.loads(line) for line in (finished / "arms" / arm / "metrics.jsonl").read_text().splitlines()]
        losses = [row["val_loss"] for row in rows if row.get("kind") == "eval"]
        assert len(losses) >= 2 and losses[-1] < losses[0], (arm, losses)


def test_lead_3_recovers_the_first_three_sentences(finished):
    lead = json.loads((finished / "results.json").read_text())["arms"]["lead-3"]
    references = [record["highlights"] for record in split(finished, "test")]
    assert lead["summaries"] == references
    assert all(lead[kind] == pytest.approx(1.0) for kind in ROUGE_TYPES)


def test_the_splits_are_disjoint(finished):
    texts = {name: {record["article"] for record in split(finished, name)}
             for name in ("train", "val", "test")}
    assert not (texts["train"] & texts["test"]) and not (texts["val"] & texts["test"]) and texts["train"]


def test_a_finished_recipe_resumes_by_reading_its_arms_back(finished, models):
    before = json.loads((finished / "results.json").read_text())["arms"]
    said = []
    run_recipe("summarization", finished, budget="small", max_time=ARM_SECONDS, data=finished.parent / "cnn.jsonl",
               model=str(models["gpt2"]), extra_models=(str(models["bart"]), str(models["pegasus"])), resume=True,
               echo=said.append)
    assert json.loads((finished / "results.json").read_text())["arms"] == before
    assert sum("finished before" in line for line in said) == 4


def test_t5_sources_get_the_summarize_prefix(tmp_path, models):
    assert source_prefix_for(str(t5_dir(tmp_path / "t5"))) == "summarize: "
    assert source_prefix_for(str(models["bart"])) == ""


def test_a_story_file_parses_into_article_and_highlights():
    story = "First line.\n\nSecond para.\n\n@highlight\n\nOne point\n\n@highlight\n\nTwo point\n"
    example = parse_story(story)
    assert example.article == "First line. Second para." and example.highlights == "One point\nTwo point"
    assert parse_story("no highlights here") is None


def test_a_stories_archive_reads_as_examples(tmp_path):
    stories = tmp_path / "cnn" / "stories"
    stories.mkdir(parents=True)
    (stories / "a.story").write_text("Alpha one. Alpha two.\n\n@highlight\n\nAlpha point\n")
    (stories / "b.story").write_text("Beta one.\n\n@highlight\n\nBeta point\n\n@highlight\n\nBeta again\n")
    (stories / "c.story").write_text("An article whose highlights are missing.\n")
    archive = tmp_path / "cnn_stories.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(stories, arcname="cnn/stories")
    examples = sorted(read_examples(archive, limit=10), key=lambda e: e.article)
    assert [(e.article, e.highlights) for e in examples] == [
        ("Alpha one. Alpha two.", "Alpha point"), ("Beta one.", "Beta point\nBeta again")]
    assert len(read_examples(archive, limit=1)) == 1


def _run(tmp_path, records, model, extra):
    data = write_jsonl(tmp_path / "data.jsonl", records)
    run_recipe("summarization", tmp_path / "out", budget="small", max_time=ARM_SECONDS, data=data, model=str(model),
               extra_models=tuple(str(m) for m in extra), echo=lambda _: None)


def test_a_csv_with_the_columns_reads_as_examples(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('article,highlights\n"One. Two, three.","One."\n', encoding="utf-8")
    assert [(e.article, e.highlights) for e in read_examples(path, limit=5)] == [("One. Two, three.", "One.")]


def test_a_tldr_model_too_short_for_any_article_is_an_error(tmp_path, models):
    short = gpt2_dir(tmp_path / "short-gpt2", positions=32)
    with pytest.raises(LmlabError, match="context \\(32 tokens\\) leaves no room"):
        _run(tmp_path, articles(10, seed=1), short, [models["bart"]])
    assert not (tmp_path / "out" / "arms").exists()


def test_data_without_the_fields_names_them(tmp_path, models):
    records = [{"text": r["article"], "summary": r["highlights"]} for r in articles(10, seed=1)]
    with pytest.raises(LmlabError, match="'article' and 'highlights'") as error:
        _run(tmp_path, records, models["gpt2"], [models["bart"]])
    assert "\n" not in str(error.value)


def test_too_few_articles_is_an_error(tmp_path, models):
    with pytest.raises(LmlabError, match="at least 5"):
        _run(tmp_path, articles(3, seed=1), models["gpt2"], [models["bart"]])


def test_an_encoder_for_the_finetuned_arm_is_an_error(tmp_path, models):
    with pytest.raises(LmlabError, match="is an encoder model; .*needs an encoder-decoder") as error:
        _run(tmp_path, articles(10, seed=1), models["gpt2"], [models["bert"]])
    assert "\n" not in str(error.value) and not (tmp_path / "out" / "arms").exists()


def test_an_encoder_decoder_for_the_tldr_arm_is_an_error(tmp_path, models):
    with pytest.raises(LmlabError, match="is an encoder-decoder model; .*needs a decoder"):
        _run(tmp_path, articles(10, seed=1), models["bart"], [models["pegasus"]])
