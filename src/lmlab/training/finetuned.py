"""Using a fine-tuned run: classify texts, generate (or stream) targets, and score a labelled file with the
task's metrics (what ``lmlab classify``, ``lmlab seq2seq`` and ``lmlab eval --data`` call)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from lmlab.errors import LmlabError
from lmlab.evaluation.classification import classification_report
from lmlab.generation import GenerationConfig, stream_text
from lmlab.training.finetune import FinetuneConfig
from lmlab.training.finetune_prepare import Codec
from lmlab.training.finetune_tasks import (
    CausalLMTask,
    ChatTask,
    decoder_outputs,
    encoder_decoder_outputs,
    generate_in_batches,
    packed_rows,
    predict_probabilities,
    strip_eos,
    text_scores,
)
from lmlab.training.run import LoadedRun, load_run
from lmlab.training.task_data import (
    BatchSize,
    EpochPlan,
    Truncation,
    chat_examples,
    read_classification,
    read_conversations,
    read_documents,
    read_pairs,
)


@dataclass
class FinetunedRun:
    """A fine-tuned run and what it was tuned for (the ``"finetune"`` section of its state)."""

    run: LoadedRun
    spec: dict[str, Any]

    @property
    def task(self) -> str:
        return self.spec["task"]

    @property
    def settings(self) -> FinetuneConfig:
        return FinetuneConfig(**self.spec["settings"])

    @property
    def codec(self) -> Codec:
        return Codec(self.run.tokenizer, self.spec)

    def require_task(self, task: str, command: str) -> None:
        if self.task != task:
            raise LmlabError(f"{command} needs a run fine-tuned with --task {task}; this one is a {self.task} run")


def is_finetuned(run: LoadedRun) -> bool:
    """Whether ``run`` was made by ``lmlab finetune``."""
    return "finetune" in run.state


def load_finetuned(path: str | Path, echo: Callable[[str], None] = print) -> FinetunedRun:
    """A run directory (or its ``best/``) written by ``lmlab finetune``."""
    run = load_run(path, echo)
    if not is_finetuned(run):
        raise LmlabError(f"{path} is not a fine-tuned run; make one with 'lmlab finetune'")
    return FinetunedRun(run, run.state["finetune"])


def _fitted(ids: list[int], limit: int | None) -> list[int]:
    return ids if limit is None else ids[:limit]


# ----------------------------------------------------------------------------- classify
def classify_texts(tuned: FinetunedRun, texts: list[str]) -> list[dict[str, Any]]:
    """For each text: its label and every label's probability (texts cut to the model's context)."""
    tuned.require_task("classify", "classify")
    names = tuned.spec["label_names"]
    ids = [_fitted(tuned.codec.text(text), tuned.run.model.max_positions) for text in texts]
    probabilities = predict_probabilities(tuned.run.model, ids, tuned.spec["pad_id"])  # (N, K)
    return [{"label": names[int(row.argmax())], "probabilities": dict(zip(names, row.tolist()))}
            for row in probabilities]


# ----------------------------------------------------------------------------- seq2seq
def generate_targets(tuned: FinetunedRun, texts: list[str], generation: GenerationConfig | None = None) -> list[str]:
    """The generated target (translation, summary, ...) of each source text."""
    generation = _decoding(tuned, generation)
    model, spec = tuned.run.model, tuned.spec
    if spec["prompt_format"] is not None:
        generate = lambda batch: decoder_outputs(model, batch, generation, spec["eos_id"], spec["pad_id"])  # noqa: E731
    else:
        generate = lambda batch: encoder_decoder_outputs(  # noqa: E731
            model, batch, generation, spec["eos_id"], spec["decoder_start_id"], spec["pad_id"])
    outputs = generate_in_batches(generate, [tuned.codec.source(text) for text in texts])
    return [tuned.codec.decode(ids) for ids in outputs]


def stream_target(tuned: FinetunedRun, text: str, generation: GenerationConfig | None = None) -> Iterator[str]:
    """The generated target of one source text, in pieces as they are decoded: a decoder-only
    (prompt-format) run streams token by token through :func:`~lmlab.generation.stream_text`; an
    encoder-decoder run yields its whole target at the end (generation has no streaming path for
    encoder-decoders)."""
    generation = _decoding(tuned, generation)
    if tuned.spec["prompt_format"] is None:
        yield from generate_targets(tuned, [text], generation)
        return
    eos_id = tuned.spec["eos_id"]
    decode = lambda ids: tuned.codec.decode(strip_eos(ids, eos_id))  # noqa: E731  (EOS ends the target, unwritten)
    yield from stream_text(tuned.run.model, decode, tuned.codec.source(text), generation)


def _decoding(tuned: FinetunedRun, generation: GenerationConfig | None) -> GenerationConfig:
    """``generation`` (default: the run's validation decoding), stopping at the run's EOS."""
    tuned.require_task("seq2seq", "seq2seq")
    generation = generation or tuned.settings.generation(tuned.spec["eos_id"])
    if tuned.spec["eos_id"] not in generation.eos_ids:
        generation.eos_ids = (*generation.eos_ids, tuned.spec["eos_id"])
    return generation


# ----------------------------------------------------------------------------- eval
def evaluate_finetuned(tuned: FinetunedRun, data: str | Path) -> dict[str, Any]:
    """The task's metrics on a file: classification report, text scores, or loss / perplexity
    (chat: on the assistant's tokens)."""
    settings = tuned.settings
    if tuned.task == "classify":
        examples = read_classification(data, settings.text_column, settings.label_column,
                                       label_names=tuned.spec["label_names"])
        predicted = [tuned.spec["label_names"].index(r["label"]) for r in classify_texts(tuned, examples.texts)]
        return classification_report(examples.labels, predicted, tuned.spec["label_names"])
    if tuned.task == "seq2seq":
        pairs = read_pairs(data, settings.source_column, settings.target_column)
        hypotheses = generate_targets(tuned, [p.source for p in pairs])
        return text_scores(hypotheses, [p.target for p in pairs])
    if tuned.task == "chat":
        return _chat_metrics(tuned, data)
    documents = read_documents(data, settings.text_column)
    context = tuned.run.model.max_positions
    rows = packed_rows([tuned.run.tokenizer.encode(d) for d in documents], context, tuned.spec["eos_id"],
                       tuned.spec["pad_id"])
    task = CausalLMTask(EpochPlan([context] * rows.size(0), BatchSize(examples=1), 0), rows, rows)
    return task.evaluate(tuned.run.model, 0, 0)


def _chat_metrics(tuned: FinetunedRun, data: str | Path) -> dict[str, Any]:
    """Loss, perplexity and accuracy on the assistant's tokens of a file of conversations."""
    conversations = read_conversations(data, tuned.settings.messages_column)
    truncation = Truncation(tuned.run.model.max_positions + 1)
    examples = chat_examples(tuned.run.tokenizer, conversations, truncation, f"{data}, conversation")
    task = ChatTask(EpochPlan([len(ids) for ids, _ in examples], BatchSize(examples=1), 0), examples, examples,
                    tuned.spec["pad_id"])
    return task.evaluate(tuned.run.model, 0, 0)
