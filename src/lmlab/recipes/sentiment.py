"""Sentiment classification of reviews (Deep Learning with Python, ch. 15: RoBERTa on IMDB): a
pretrained encoder fine-tuned on labelled reviews, against two baselines on the same split — a
bag-of-words logistic regression (unigram and bigram TF-IDF, scikit-learn) and a small encoder
trained from scratch with the pretrained model's tokenizer.

Both neural arms are ``lmlab finetune --task classify`` runs with the same seed and time; the
bag-of-words model trains to convergence (it takes seconds). The report gives accuracy and
macro-F1 on the test split, a confusion matrix per arm and each arm's most confident mistakes.
"""

from __future__ import annotations

import dataclasses
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from lmlab.data.readers import LabelledTexts, read_labelled_texts
from lmlab.errors import LmlabError, require_optional
from lmlab.evaluation.classification import classification_report
from lmlab.interop.hub import resolve_model_path
from lmlab.models import ModelConfig
from lmlab.models.interface import ENCODER
from lmlab.recipes.base import DataSource, Recipe, RecipeContext, RecipeReport, markdown_table
from lmlab.recipes.finetuned_arms import (
    INIT_DIR,
    SPLITS_DIR,
    Splits,
    finetune_command,
    initial_run,
    plot_curves,
    run_finetune,
    three_way_split,
    trained,
    write_jsonl,
)
from lmlab.training.finetune import FinetuneConfig
from lmlab.training.finetuned import classify_texts
from lmlab.tokenizers import Tokenizer
from lmlab.training.run import load_run
from lmlab.viz.confusion import plot_confusion_matrix

DEFAULT_MODEL = "FacebookAI/roberta-base"
ARMS = ("tfidf-logreg", "scratch-encoder", "pretrained")
IMDB_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_LABELS = ("neg", "pos")
LOCAL_FORMAT = ("a CSV, TSV or JSONL file with 'text' and 'label' columns, or the aclImdb_v1.tar.gz archive "
                "(or its extracted aclImdb folder with train/ and test/ pos and neg folders)")
MISTAKES = 5  # the most confident mistakes shown per arm
SNIPPET_CHARS = 240
CURVES = "curves.png"  # validation loss of the two neural arms


@dataclass(frozen=True)
class Sizes:
    """What a budget gives the recipe: examples per split, words kept per review, model shapes."""

    train: int
    val: int
    test: int
    max_words: int
    scratch: dict[str, Any]
    scratch_lr: float


SIZES = {
    "small": Sizes(400, 100, 200, 100, {"d_model": 64, "n_head": 4, "n_layer": 2, "context_length": 160}, 1e-3),
    "default": Sizes(2000, 200, 500, 200, {"d_model": 128, "n_head": 4, "n_layer": 2, "context_length": 320}, 1e-3),
    "large": Sizes(24_000, 1000, 25_000, 400, {"d_model": 256, "n_head": 8, "n_layer": 4, "context_length": 512}, 5e-4),
}


@dataclass
class Reviews:
    """The recipe's examples: texts with label ids, the label names, and the three splits."""

    texts: list[str]
    labels: list[int]
    names: list[str]
    splits: Splits

    def split(self, name: str) -> tuple[list[str], list[int]]:
        indices = getattr(self.splits, name)
        return [self.texts[i] for i in indices], [self.labels[i] for i in indices]


# ----------------------------------------------------------------------------- data
def read_reviews(path: Path, sizes: Sizes, seed: int) -> Reviews:
    """Reviews of the IMDB archive or folder (its train and test splits, sampled to the budget's
    sizes) or of a labelled CSV/TSV/JSONL file (split three ways)."""
    if path.is_dir() or tarfile.is_tarfile(path):
        return _imdb_reviews(path, sizes, seed)
    try:
        data = read_labelled_texts(path, "text", "label")
    except LmlabError as exc:
        raise LmlabError(f"sentiment needs {LOCAL_FORMAT}: {exc}") from None
    kept = [(text, label) for text, label in zip((_clipped(t, sizes.max_words) for t in data.texts), data.labels)
            if text]
    texts, labels = [text for text, _ in kept], [label for _, label in kept]
    splits = three_way_split(len(texts), sizes.test, sizes.val, sizes.train, seed, f"{path} (non-empty reviews)")
    return Reviews(texts, labels, data.label_names, splits)


def _imdb_reviews(path: Path, sizes: Sizes, seed: int) -> Reviews:
    found: dict[str, LabelledTexts] = {}
    for split in ("train", "test"):
        pairs = sorted(_imdb_files(path, split))  # (file name, label, text), in a stable order
        if not pairs:
            raise LmlabError(f"{path} holds no aclImdb/{split}/pos or /neg reviews; pass {LOCAL_FORMAT}")
        found[split] = LabelledTexts([_clipped(text, sizes.max_words) for _, _, text in pairs],
                                     [label for _, label, _ in pairs], list(IMDB_LABELS))
    train, test = found["train"], found["test"]
    pool = _shuffled(len(train), seed)  # validation and training reviews from the archive's training split
    picked_test = sorted(_shuffled(len(test), seed)[:sizes.test])
    val = max(1, min(sizes.val, len(train) // 5))
    splits = Splits(sorted(pool[val:val + sizes.train]), sorted(pool[:val]),
                    [len(train) + i for i in picked_test])
    return Reviews(train.texts + test.texts, train.labels + test.labels, list(IMDB_LABELS), splits)


def _shuffled(count: int, seed: int) -> list[int]:
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()


def _imdb_files(path: Path, split: str) -> Iterator[tuple[str, int, str]]:
    """(name, label id, text) of every review of ``split`` in the archive or the folder."""
    if path.is_dir():
        root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
        for label, name in enumerate(IMDB_LABELS):
            for file in (root / split / name).glob("*.txt"):
                yield f"{name}/{file.name}", label, file.read_text(encoding="utf-8", errors="replace")
        return
    with tarfile.open(path) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 3 and parts[-3] == split and parts[-2] in IMDB_LABELS:
                text = archive.extractfile(member).read().decode("utf-8", errors="replace")
                yield f"{parts[-2]}/{parts[-1]}", IMDB_LABELS.index(parts[-2]), text


def _clipped(text: str, max_words: int) -> str:
    """The review's first ``max_words`` words, IMDB's ``<br />`` line breaks as spaces."""
    return " ".join(text.replace("<br />", " ").split()[:max_words])


def _write_splits(directory: Path, reviews: Reviews) -> dict[str, Path]:
    present = set(reviews.split("train")[1])
    if len(present) < 2:
        only = ", ".join(reviews.names[y] for y in present) or "none"
        raise LmlabError(f"the training split holds reviews of one label only ({only}); sentiment needs at least "
                         f"two labels ({LOCAL_FORMAT})")
    files = {}
    for name in ("train", "val", "test"):
        texts, labels = reviews.split(name)
        if not texts:
            raise LmlabError(f"the {name} split is empty; pass more labelled reviews ({LOCAL_FORMAT})")
        files[name] = write_jsonl(directory / f"{name}.jsonl",
                                  ({"text": t, "label": reviews.names[y]} for t, y in zip(texts, labels)))
    return files


# ----------------------------------------------------------------------------- arms
def pretrained_encoder(name: str) -> tuple[Path, Tokenizer]:
    """The local path and the tokenizer of the pretrained model ``--model`` names, which must be
    an encoder (RoBERTa, BERT, an lmlab encoder run)."""
    path = resolve_model_path(name)
    run = load_run(path, echo=lambda _: None)
    structure = run.model.structure
    if structure != ENCODER:
        article = "an" if structure[0] in "ae" else "a"
        raise LmlabError(f"sentiment fine-tunes a pretrained encoder (RoBERTa, BERT, an lmlab encoder run); {name} "
                         f"is {article} {structure} model; pass --model with an encoder, e.g. {DEFAULT_MODEL}")
    return path, run.tokenizer


def bag_of_words(train: tuple[list[str], list[int]], test_texts: list[str]) -> dict[str, Any]:
    """Unigram+bigram TF-IDF features and a logistic regression (scikit-learn): its predictions
    and class probabilities on ``test_texts``."""
    require_optional("sklearn", "recipes", "the bag-of-words baseline of the sentiment recipe")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2 if len(train[0]) >= 1000 else 1, sublinear_tf=True)
    features = vectorizer.fit_transform(train[0])
    classifier = LogisticRegression(max_iter=1000).fit(features, train[1])
    probabilities = classifier.predict_proba(vectorizer.transform(test_texts))  # (N, classes seen in training)
    classes = classifier.classes_.tolist()
    return {"predictions": [classes[row.argmax()] for row in probabilities],
            "confidences": [float(row.max()) for row in probabilities],
            "parameters": int(classifier.coef_.size + classifier.intercept_.size),
            "steps": int(classifier.n_iter_.max())}


def _finetuned_scores(config: FinetuneConfig, resume: bool, test_texts: list[str], names: list[str],
                      echo: Callable[[str], None]) -> dict[str, Any]:
    outcome = run_finetune(config, resume, echo)
    tuned = trained(Path(config.out))
    rows = classify_texts(tuned, test_texts)
    outcome["parameters"] = sum(p.numel() for p in tuned.run.model.parameters())
    outcome["predictions"] = [names.index(row["label"]) for row in rows]
    outcome["confidences"] = [max(row["probabilities"].values()) for row in rows]
    return outcome


def scratch_config(sizes: Sizes, num_labels: int) -> ModelConfig:
    """The small encoder trained from scratch: mean-pooled classifier, learned positions."""
    return ModelConfig(backbone="encoder", head="classifier", num_labels=num_labels, pooling="mean",
                       position="learned", dropout=0.1, **sizes.scratch)


def run(context: RecipeContext) -> RecipeReport:
    """Check the pretrained encoder, split the reviews, train and score the three arms."""
    sizes = SIZES[context.budget]
    model_path, tokenizer = pretrained_encoder(context.model or DEFAULT_MODEL)
    reviews = read_reviews(context.data_path(), sizes, context.seed)
    files = _write_splits(context.out_dir / SPLITS_DIR, reviews)
    train, (test_texts, test_labels) = reviews.split("train"), reviews.split("test")
    base = {"task": "classify", "data": str(files["train"]), "val": str(files["val"]), "max_time": context.arm_seconds,
            "seed": context.seed, "batch_size": 16}
    scratch_start = initial_run(context.out_dir / INIT_DIR / "scratch-encoder",
                                scratch_config(sizes, len(reviews.names)), tokenizer, context.seed)
    configs = {
        "scratch-encoder": FinetuneConfig(model=str(scratch_start), out=str(context.arm_dir("scratch-encoder")),
                                          lr=sizes.scratch_lr, **base),
        "pretrained": FinetuneConfig(model=str(model_path), out=str(context.arm_dir("pretrained")), lr=2e-5, **base),
    }
    outcomes = {"tfidf-logreg": context.run_arm("tfidf-logreg", lambda _dir, _resume: bag_of_words(train, test_texts),
                                                  doing="fitting the TF-IDF logistic regression")}
    for arm, config in configs.items():
        context.save_arm_config(arm, {"finetune": dataclasses.asdict(config)})
        outcomes[arm] = context.run_arm(arm, lambda run_dir, resume, c=config: _finetuned_scores(
            c, resume, test_texts, reviews.names, context.echo))
    commands = {arm: finetune_command(config) for arm, config in configs.items()}
    plot_curves(context.out_dir / CURVES, {arm: context.arm_dir(arm) for arm in configs})
    return _report(context, reviews, outcomes, test_texts, test_labels, commands)


# ----------------------------------------------------------------------------- the report
def _report(context: RecipeContext, reviews: Reviews, outcomes: dict[str, dict[str, Any]], test_texts: list[str],
            test_labels: list[int], commands: dict[str, str]) -> RecipeReport:
    names = reviews.names
    arms, figures, sections = {}, [CURVES], []
    for arm in ARMS:
        outcome = outcomes[arm]
        scores = classification_report(test_labels, outcome["predictions"], names)
        arms[arm] = {**scores, **{k: v for k, v in outcome.items() if k not in ("predictions", "confidences")}}
        figure = f"confusion-{arm}.png"
        plot_confusion_matrix(scores["confusion_matrix"], names, context.out_dir / figure)
        figures.append(figure)
        sections.append((f"Most confident mistakes ({arm})", _mistakes(outcome, test_texts, test_labels, names)))
    rows = [{"arm": arm, "parameters": arms[arm]["parameters"], "steps": arms[arm]["steps"],
             "accuracy": arms[arm]["accuracy"], "macro-F1": arms[arm]["macro_f1"]} for arm in ARMS]
    best = max(ARMS, key=lambda arm: arms[arm]["accuracy"])
    splits = reviews.splits
    summary = (f"{best} is the most accurate ({arms[best]['accuracy']:.1%}) on {len(test_labels)} test reviews; "
               f"every arm trained on the same {len(splits.train)} reviews (the neural arms for "
               f"{context.arm_seconds:g} s each, keeping their best checkpoint on {len(splits.val)} validation "
               f"reviews; the bag-of-words model to convergence).")
    results = {"arms": arms, "labels": names, "test_labels": [names[y] for y in test_labels],
               "predictions": {arm: [names[p] for p in outcomes[arm]["predictions"]] for arm in ARMS},
               "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}}
    title = "Sentiment: fine-tuned pretrained encoder vs TF-IDF logistic regression vs encoder from scratch"
    return RecipeReport(title, summary, ["arm", "parameters", "steps", "accuracy", "macro-F1"], rows, results, sections,
                        commands, figures)


def _mistakes(outcome: dict[str, Any], texts: list[str], labels: list[int], names: list[str]) -> str:
    wrong = [i for i, (p, y) in enumerate(zip(outcome["predictions"], labels)) if p != y]
    if not wrong:
        return "No mistakes on the test split."
    wrong.sort(key=lambda i: -outcome["confidences"][i])
    rows = [{"confidence": outcome["confidences"][i], "true": names[labels[i]],
             "predicted": names[outcome["predictions"][i]], "review": _snippet(texts[i])} for i in wrong[:MISTAKES]]
    return markdown_table(["confidence", "true", "predicted", "review"], rows)


def _snippet(text: str) -> str:
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …"


RECIPE = Recipe(
    name="sentiment",
    description="IMDB reviews: fine-tuned RoBERTa-style encoder vs TF-IDF logistic regression vs encoder from scratch",
    arm_seconds={"small": 40, "default": 180, "large": 1800},
    run=run,
    source=DataSource(
        description="labelled movie reviews (the IMDB aclImdb archive)",
        url=IMDB_URL, sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
        filename="aclImdb_v1.tar.gz", local_format=LOCAL_FORMAT,
    ),
)
