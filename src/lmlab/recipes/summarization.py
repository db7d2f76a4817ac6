"""Summarization (NLPwT ch. 6): the lead-3 baseline, TL;DR prompting of a pretrained decoder and
fine-tuned encoder-decoders, scored with ROUGE-1/2/L/Lsum on the same held-out articles.

* **lead-3** — the article's first three sentences.
* **tldr** — ``--model`` (a decoder: GPT-2, Llama, an lmlab decoder run) continues
  ``article + "\\nTL;DR:\\n"`` greedily; the summary is its text up to the first line break.
* **one arm per ``--seq2seq-model``** (T5, BART, PEGASUS, an lmlab encoder-decoder run) —
  fine-tuned on the training split with ``lmlab finetune --task seq2seq`` for the arm budget,
  then summarizing the held-out articles greedily.

Sentences are split by pysbd (rule-based, offline, keeps "U.S." and "Mr." whole), for lead-3
and, as the chapter does, for ROUGE-Lsum: every summary and reference is scored with one
sentence a line. Data: a JSONL/CSV/TSV file with CNN/DailyMail's ``article`` and
``highlights`` fields, or the CNN stories archive (``*.story`` files, highlights after
``@highlight``), split here by seed into training, validation (model selection) and test.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tarfile
from pathlib import Path
from typing import Any, Callable

from lmlab.errors import LmlabError, require_optional
from lmlab.evaluation.text_metrics import ROUGE_TYPES, rouge
from lmlab.generation import GenerationConfig
from lmlab.models.interface import DECODER, ENCODER_DECODER
from lmlab.recipes.base import DataSource, Recipe, RecipeContext, RecipeReport
from lmlab.recipes.finetuned_arms import (
    SPLITS_DIR,
    finetune_command,
    plot_curves,
    run_finetune,
    three_way_split,
    trained,
    write_jsonl,
)
from lmlab.training.finetune import FinetuneConfig
from lmlab.training.finetune_tasks import decoder_outputs, generate_in_batches, text_scores
from lmlab.training.finetuned import generate_targets
from lmlab.training.run import LoadedRun, load_run
from lmlab.training.task_data import read_pairs

ARTICLE, HIGHLIGHTS = "article", "highlights"
TLDR_CUE = "\nTL;DR:\n"
LEAD_SENTENCES = 3
DEFAULT_DECODER = "openai-community/gpt2"
DEFAULT_SEQ2SEQ = ("google-t5/t5-small",)
T5_PREFIX = "summarize: "
CURVES = "curves.png"
SAMPLES_SHOWN = 3
UNBOUNDED_CONTEXT = 1024  # article tokens + cue + summary for a decoder without a position limit
ARTICLE_EXCERPT_CHARS = 400
STORY_SUFFIX = ".story"
HIGHLIGHT_MARK = "@highlight"


@dataclasses.dataclass(frozen=True)
class Scale:
    """How much of the data and decoding a budget uses."""

    test: int  # held-out articles the report scores
    val: int  # articles the fine-tuning runs select their best checkpoint on
    train: int  # at most this many training articles
    max_new_tokens: int  # longest generated summary
    batch_size: int  # fine-tuning examples per step


SCALES = {
    "small": Scale(test=8, val=4, train=200, max_new_tokens=32, batch_size=4),
    "default": Scale(test=20, val=8, train=2000, max_new_tokens=64, batch_size=4),
    "large": Scale(test=500, val=100, train=50000, max_new_tokens=128, batch_size=16),
}


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class Example:
    """One article and its reference summary (sentences on their own lines)."""

    article: str
    highlights: str


def read_examples(path: Path, limit: int) -> list[Example]:
    """Up to ``limit`` article/summary pairs: a table with ``article`` and ``highlights``
    fields, or a directory / ``.tgz`` of CNN ``.story`` files."""
    if path.is_dir() or path.name.endswith((".tgz", ".tar.gz")):
        examples = _stories(path, limit)
    else:
        try:
            pairs = read_pairs(path, ARTICLE, HIGHLIGHTS)
        except LmlabError as exc:
            raise LmlabError(f"summarization data needs {ARTICLE!r} and {HIGHLIGHTS!r} fields (CNN/DailyMail's "
                             f"JSONL format, or CSV/TSV columns of those names): {exc}") from None
        examples = [Example(pair.source, pair.target) for pair in pairs[:limit]]
    if not examples:
        raise LmlabError(f"{path} holds no articles with highlights; give {ARTICLE!r}/{HIGHLIGHTS!r} records")
    return examples


def _stories(path: Path, limit: int) -> list[Example]:
    """CNN/DailyMail ``.story`` files (article paragraphs, then ``@highlight`` blocks), in
    name order for a directory and archive order for a ``.tgz``; stories without highlights are skipped."""
    examples = []
    for text in _story_texts(path):
        example = parse_story(text)
        if example is not None:
            examples.append(example)
        if len(examples) >= limit:
            break
    return examples


def _story_texts(path: Path):
    if path.is_dir():
        for file in sorted(path.rglob(f"*{STORY_SUFFIX}")):
            yield file.read_text(encoding="utf-8", errors="replace")
        return
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(STORY_SUFFIX):
                    yield archive.extractfile(member).read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise LmlabError(f"{path} is not a readable .tgz of .story files ({exc}); pass a JSONL file with "
                         f"{ARTICLE!r} and {HIGHLIGHTS!r} fields instead") from None


def parse_story(text: str) -> Example | None:
    """A ``.story`` file's article (paragraphs before the first ``@highlight``) and its
    highlights (the line after each ``@highlight``, one a line); None without either."""
    article_part, _, highlight_part = text.partition(HIGHLIGHT_MARK)
    article = " ".join(line.strip() for line in article_part.splitlines() if line.strip())
    highlights = [block.strip().splitlines()[0].strip() for block in highlight_part.split(HIGHLIGHT_MARK)
                  if block.strip()]
    if not article or not highlights:
        return None
    return Example(article, "\n".join(highlights))


@dataclasses.dataclass(frozen=True)
class Splits:
    """The training, validation (model selection) and test (the report) examples."""

    train: list[Example]
    val: list[Example]
    test: list[Example]


def split_examples(examples: list[Example], scale: Scale, seed: int) -> Splits:
    """Seeded disjoint splits (:func:`~lmlab.recipes.finetuned_arms.three_way_split`)."""
    indices = three_way_split(len(examples), scale.test, scale.val, scale.train, seed, "summarization data")
    pick = lambda name: [examples[i] for i in getattr(indices, name)]  # noqa: E731
    return Splits(pick("train"), pick("val"), pick("test"))


def _records(examples: list[Example]) -> list[dict[str, str]]:
    return [{ARTICLE: e.article, HIGHLIGHTS: e.highlights} for e in examples]


# ----------------------------------------------------------------------------- sentences
class SentenceSplitter:
    """pysbd's English segmenter: a text → its sentences (stripped, empty ones dropped)."""

    def __init__(self):
        pysbd = require_optional("pysbd", "recipes", "the summarization recipe's sentence splitting")
        self._segmenter = pysbd.Segmenter(language="en", clean=False)

    def sentences(self, text: str) -> list[str]:
        pieces = (self._segmenter.segment(line) for line in text.splitlines() if line.strip())
        return [sentence.strip() for piece in pieces for sentence in piece if sentence.strip()]

    def one_a_line(self, text: str) -> str:
        """The text with one sentence a line (what ROUGE-Lsum reads as sentences)."""
        return "\n".join(self.sentences(text))

    def lead(self, text: str, count: int = LEAD_SENTENCES) -> str:
        """The first ``count`` sentences, one a line."""
        return "\n".join(self.sentences(text)[:count])


def scored(hypotheses: list[str], references: list[str], splitter: SentenceSplitter) -> dict[str, Any]:
    """ROUGE-1/2/L/Lsum F-measures (rouge-score) of summaries against references, both one
    sentence a line; the summaries are kept (as scored) for the report."""
    summaries = [splitter.one_a_line(h) for h in hypotheses]
    refs = [splitter.one_a_line(r) for r in references]
    return {**rouge(summaries, refs), "summaries": summaries}


# ----------------------------------------------------------------------------- models
def _check_kind(run: LoadedRun, path: str, needed: str, flag: str, examples: str) -> None:
    structure = run.model.structure
    if structure != needed:
        raise LmlabError(f"{flag} {path} is a{'n' if structure[0] == 'e' else ''} {structure} model; the "
                         f"summarization recipe needs a{'n' if needed[0] == 'e' else ''} {needed} there ({examples})")


def source_prefix_for(path: str) -> str:
    """T5 was pretrained with task prefixes: ``summarize: `` for its sources; others take none."""
    from lmlab.interop.hub import resolve_model_path

    config = resolve_model_path(path) / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "t5":
        return T5_PREFIX
    return ""


def _arm_names(models: tuple[str, ...]) -> list[str]:
    """``finetuned-<model folder name>``, numbered when two models share a name."""
    names = []
    for model in models:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model.rstrip("/")).name).strip("-.") or "model"
        name, number = f"finetuned-{stem}", 2
        while name in names:
            name, number = f"finetuned-{stem}-{number}", number + 1
        names.append(name)
    return names


# ----------------------------------------------------------------------------- arms
def tldr_summaries(run: LoadedRun, articles: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of ``article + TL;DR cue`` (the article cut so prompt and summary fit
    the context), each up to its first line break."""
    tokenizer, model = run.tokenizer, run.model
    special = tokenizer.special_tokens
    eos_id = special.get("eos", 0)
    room = article_room(run, max_new_tokens)
    prompts = [tokenizer.encode(article)[:room] + tokenizer.encode(TLDR_CUE) for article in articles]
    generation = GenerationConfig(max_new_tokens=max_new_tokens, eos_ids=(eos_id,), draft_tokens=0)
    pad_id = special.get("pad", eos_id)
    outputs = generate_in_batches(lambda batch: decoder_outputs(model, batch, generation, eos_id, pad_id), prompts)
    return [_first_line(tokenizer.decode(ids)) for ids in outputs]


def article_room(run: LoadedRun, max_new_tokens: int) -> int:
    """The article tokens a TL;DR prompt keeps: the context less the cue and the summary."""
    context = run.model.max_positions or UNBOUNDED_CONTEXT
    room = context - max_new_tokens - len(run.tokenizer.encode(TLDR_CUE))
    if room < 1:
        raise LmlabError(f"the TL;DR model's context ({context} tokens) leaves no room for an article and a "
                         f"{max_new_tokens}-token summary; use a model with a longer context")
    return room


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines()]
    return lines[0] if lines else ""


@dataclasses.dataclass
class Plan:
    """What one recipe run does: the splits, the models of each arm and the budget's scale."""

    context: RecipeContext
    scale: Scale
    splits: Splits
    split_files: dict[str, Path]
    splitter: SentenceSplitter
    decoder: LoadedRun
    decoder_name: str
    seq2seq: dict[str, str]  # arm → model

    @property
    def references(self) -> list[str]:
        return [example.highlights for example in self.splits.test]

    @property
    def articles(self) -> list[str]:
        return [example.article for example in self.splits.test]


def _plan(context: RecipeContext) -> Plan:
    """Check the data and every model before any arm runs, and write the splits."""
    scale = SCALES.get(context.budget, SCALES["default"])
    splitter = SentenceSplitter()
    examples = read_examples(context.data_path(), scale.train + scale.val + scale.test)
    splits = split_examples(examples, scale, context.seed)
    quiet = lambda _: None  # noqa: E731
    decoder_name = context.model or DEFAULT_DECODER
    decoder = load_run(decoder_name, quiet)
    _check_kind(decoder, decoder_name, DECODER, "--model", "the TL;DR arm prompts a decoder such as GPT-2")
    article_room(decoder, scale.max_new_tokens)
    models = context.extra_models or DEFAULT_SEQ2SEQ
    for model in models:
        _check_kind(load_run(model, quiet), model, ENCODER_DECODER, "--seq2seq-model",
                    "the fine-tuned arms need T5, BART, PEGASUS or an lmlab encoder-decoder run")
    directory = context.out_dir / SPLITS_DIR
    files = {name: write_jsonl(directory / f"{name}.jsonl", _records(getattr(splits, name)))
             for name in ("train", "val", "test")}
    return Plan(context, scale, splits, files, splitter, decoder, decoder_name, dict(zip(_arm_names(models), models)))


def _finetune_config(plan: Plan, arm: str, model: str) -> FinetuneConfig:
    context = plan.context
    return FinetuneConfig(model=model, task="seq2seq", data=str(plan.split_files["train"]),
                          val=str(plan.split_files["val"]), out=str(context.arm_dir(arm)), source_column=ARTICLE,
                          target_column=HIGHLIGHTS, source_prefix=source_prefix_for(model), max_time=context.arm_seconds,
                          batch_size=plan.scale.batch_size, max_new_tokens=plan.scale.max_new_tokens, seed=context.seed)


def _finetuned_arm(plan: Plan, config: FinetuneConfig) -> Callable[[Path, bool], dict[str, Any]]:
    def train(run_dir: Path, resume: bool) -> dict[str, Any]:
        outcome = run_finetune(config, resume, plan.context.echo)
        generation = GenerationConfig(max_new_tokens=plan.scale.max_new_tokens, draft_tokens=0)
        summaries = generate_targets(trained(run_dir), plan.articles, generation)
        return {"model": config.model, **outcome, **scored(summaries, plan.references, plan.splitter)}
    return train


def _lead_arm(plan: Plan) -> Callable[[Path, bool], dict[str, Any]]:
    def run(run_dir: Path, resume: bool) -> dict[str, Any]:
        summaries = [plan.splitter.lead(article) for article in plan.articles]
        return {"model": "", "steps": 0, **scored(summaries, plan.references, plan.splitter)}
    return run


def _tldr_arm(plan: Plan) -> Callable[[Path, bool], dict[str, Any]]:
    def run(run_dir: Path, resume: bool) -> dict[str, Any]:
        summaries = tldr_summaries(plan.decoder, plan.articles, plan.scale.max_new_tokens)
        return {"model": plan.decoder_name, "steps": 0, **scored(summaries, plan.references, plan.splitter)}
    return run


# ----------------------------------------------------------------------------- the report
def run_summarization(context: RecipeContext) -> RecipeReport:
    """Run every arm on the same held-out articles and report ROUGE and the summaries."""
    plan = _plan(context)
    arms = {"lead-3": context.run_arm("lead-3", _lead_arm(plan), doing="taking each article's first three sentences"),
            "tldr": context.run_arm("tldr", _tldr_arm(plan), doing=f"prompting {plan.decoder_name} with TL;DR "
                                    "(no training)")}
    commands = {}
    text_scores(["warm up"], ["warm up"])  # the metric libraries' first use is slow: outside the arms' clocks
    for arm, model in plan.seq2seq.items():
        config = _finetune_config(plan, arm, model)
        context.save_arm_config(arm, {"finetune": dataclasses.asdict(config)})
        commands[arm] = finetune_command(config)
        arms[arm] = context.run_arm(arm, _finetuned_arm(plan, config))
    figures = [plot_curves(context.out_dir / CURVES, {arm: context.arm_dir(arm) for arm in plan.seq2seq})]
    counts = {name: len(getattr(plan.splits, name)) for name in ("train", "val", "test")}
    return RecipeReport(
        title="Summarization: lead-3 vs TL;DR prompting vs fine-tuned encoder-decoders",
        summary=_summary(plan, arms, counts), columns=["arm", "kind", "model", "steps", *ROUGE_TYPES, "seconds"],
        rows=_rows(arms),
        results={"arms": arms, "splits": counts, "max_new_tokens": plan.scale.max_new_tokens},
        sections=[("Summaries beside the reference", _samples(plan, arms))], commands=commands, figures=figures)


def _rows(arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per arm: its kind, model, training steps, ROUGE and seconds."""
    kinds = {"lead-3": "baseline", "tldr": "prompted decoder"}
    return [{"arm": arm, "kind": kinds.get(arm, "fine-tuned encoder-decoder"), "model": result["model"],
             "steps": result["steps"], **{kind: result[kind] for kind in ROUGE_TYPES}, "seconds": result["wall_s"]}
            for arm, result in arms.items()]


def _summary(plan: Plan, arms: dict[str, dict[str, Any]], counts: dict[str, int]) -> str:
    """The paragraph under the table: what was scored, the winner by ROUGE-2, how the arms ran."""
    best = max(arms, key=lambda arm: arms[arm]["rouge2"])
    return (f"ROUGE F-measures (rouge-score, Porter stemming; 0-1) on {counts['test']} held-out articles; "
            f"Lsum reads one sentence a line (pysbd). Best ROUGE-2: **{best}** ({arms[best]['rouge2']:.4f}). "
            f"Fine-tuned arms trained on {counts['train']} articles for {plan.context.arm_seconds:g} s each "
            f"(best checkpoint by chrF on {counts['val']} validation articles); decoding is greedy, at most "
            f"{plan.scale.max_new_tokens} tokens.")


def _samples(plan: Plan, arms: dict[str, dict[str, Any]]) -> str:
    """The first held-out articles (an excerpt) with the reference and every arm's summary."""
    blocks = []
    for index, example in enumerate(plan.splits.test[:SAMPLES_SHOWN]):
        cut = len(example.article) > ARTICLE_EXCERPT_CHARS
        excerpt = example.article[:ARTICLE_EXCERPT_CHARS] + ("…" if cut else "")
        lines = [f"### Article {index + 1}", "", f"> {_cell(excerpt)}", "", "| summary | text |", "|---|---|",
                 f"| reference | {_cell(plan.splitter.one_a_line(example.highlights))} |"]
        lines += [f"| {arm} | {_cell(result['summaries'][index])} |" for arm, result in arms.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(text: str) -> str:
    """Text for one Markdown table cell: sentences separated by `` / ``, pipes escaped."""
    return " / ".join(line for line in text.splitlines() if line.strip()).replace("|", "\\|") or "(empty)"


RECIPE = Recipe(
    name="summarization",
    description="NLPwT ch. 6: lead-3 vs TL;DR prompting vs fine-tuned T5/BART/PEGASUS, ROUGE-1/2/L/Lsum",
    arm_seconds={"small": 20, "default": 120, "large": 1800},
    run=run_summarization,
    source=DataSource(
        description="CNN news stories with highlights (the CNN half of CNN/DailyMail, cnn_stories.tgz)",
        url="https://huggingface.co/datasets/ccdv/cnn_dailymail/resolve/main/cnn_stories.tgz",
        sha256="e8fbc0027e54e0a916abd9c969eb35f708ed1467d7ef4e3b17a56739d65cb200",
        filename="cnn_stories.tgz",
        local_format="a JSONL/CSV/TSV file with 'article' and 'highlights' fields, or a folder/.tgz of .story files",
    ),
)
