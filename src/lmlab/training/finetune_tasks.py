"""Fine-tuning tasks as the trainer's :class:`~lmlab.training.objective_registry.TrainingTask`:
sequence classification, sequence-to-sequence (encoder-decoder, or a decoder with a prompt
format) and continued pretraining (causal LM on packed documents).

Every task holds its tokenised examples and an :class:`~lmlab.training.task_data.EpochPlan`;
``train_batch`` returns the run's next batch (the trainer's generator is not needed: the plan is
already a function of the seed), and :meth:`ExampleTask.seek` puts a resumed run back at its
place. ``evaluate`` scores the whole validation set.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.data.collate import collate_classification, collate_seq2seq, pad_batch
from lmlab.data.packing import PAD_SEGMENT, pack_documents
from lmlab.evaluation import evaluate_batches
from lmlab.evaluation.classification import classification_report
from lmlab.evaluation.text_metrics import bleu, chrf, rouge
from lmlab.generation import GenerationConfig, generate_batch, generate_seq2seq
from lmlab.objectives import IGNORE_INDEX, LMBatch, token_cross_entropy
from lmlab.training.objective_registry import call_decoder, call_encoder_decoder
from lmlab.training.task_data import EpochPlan, sequential_batches

EVAL_BATCH_SIZE = 32
Ids = list[int]


class ExampleTask:
    """What every fine-tuning task shares: the run's batches in plan order, from a cursor."""

    def __init__(self, plan: EpochPlan, lengths: Sequence[int]):
        self.plan = plan
        self.cursor = 0  # batches handed out so far (= optimizer steps, the trainer's grad_accum being 1)
        self.tokens_per_batch = max(1, round(sum(lengths) / len(plan.epoch(0))))  # a mean, for tokens/s

    def seek(self, batches_done: int) -> None:
        """Continue with the run's ``batches_done``-th batch (after a resume)."""
        self.cursor = batches_done

    def train_batch(self, generator: torch.Generator) -> LMBatch:
        batch = self.collate(self.plan.batch(self.cursor), train=True)
        self.cursor += 1
        return batch

    def collate(self, indices: list[int], train: bool) -> LMBatch:
        raise NotImplementedError


# ----------------------------------------------------------------------------- classify
class ClassifyTask(ExampleTask):
    """Texts → one label each; cross-entropy on the classifier's logits."""

    def __init__(self, plan: EpochPlan, train: tuple[list[Ids], list[int]], val: tuple[list[Ids], list[int]],
                 label_names: list[str], pad_id: int):
        super().__init__(plan, [len(ids) for ids in train[0]])
        self.train_ids, self.train_labels = train
        self.val_ids, self.val_labels = val
        self.label_names, self.pad_id = label_names, pad_id

    def collate(self, indices: list[int], train: bool) -> LMBatch:
        ids, labels = (self.train_ids, self.train_labels) if train else (self.val_ids, self.val_labels)
        batch = collate_classification([ids[i] for i in indices], [labels[i] for i in indices], self.pad_id)
        return LMBatch(batch.input_ids, batch.labels, attention_mask=batch.attention_mask)

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor:
        logits = model(batch.input_ids, attention_mask=batch.attention_mask)  # (B, K)
        return F.cross_entropy(logits.float(), batch.labels)

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]:
        """Loss, accuracy and macro-F1 over the whole validation set."""
        probabilities = predict_probabilities(model, self.val_ids, self.pad_id)  # (N, K)
        report = classification_report(self.val_labels, probabilities.argmax(-1).tolist(), self.label_names)
        picked = probabilities[torch.arange(len(self.val_labels)), torch.tensor(self.val_labels)]
        loss = -picked.clamp(min=1e-12).log().mean().item()
        return {"loss": loss, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}

    def validation_report(self, model: nn.Module) -> dict:
        """The validation set's classification report: per-class scores and the confusion matrix."""
        predicted = predict_probabilities(model, self.val_ids, self.pad_id).argmax(-1).tolist()
        return classification_report(self.val_labels, predicted, self.label_names)


@torch.no_grad()
def predict_probabilities(model: nn.Module, texts_ids: list[Ids], pad_id: int) -> torch.Tensor:
    """Class probabilities (N, K) of a classifier for tokenised texts, in batches."""
    was_training = model.training
    model.eval()
    rows = []
    for indices in sequential_batches(len(texts_ids), EVAL_BATCH_SIZE):
        padded = pad_batch([texts_ids[i] for i in indices], pad_id)
        rows.append(model(padded.input_ids, attention_mask=padded.attention_mask).float().softmax(-1))  # (B, K)
    model.train(was_training)
    return torch.cat(rows)


# ----------------------------------------------------------------------------- seq2seq
Generate = Callable[[nn.Module, list[Ids]], list[Ids]]  # (model, sources) → generated target ids


class Seq2SeqTask(ExampleTask):
    """(source, target) pairs for an encoder-decoder, trained with teacher forcing; padded label
    positions are ignored. Validation also generates and scores the outputs."""

    def __init__(self, plan: EpochPlan, train: tuple[list[Ids], list[Ids]], val: tuple[list[Ids], list[Ids]],
                 pad_id: int, eos_id: int, decoder_start_id: int, decode_text: Callable[[Ids], str],
                 generation: GenerationConfig):
        super().__init__(plan, [len(s) + len(t) for s, t in zip(*train)])
        self.train_pairs, self.val_pairs = train, val
        self.pad_id, self.eos_id, self.decoder_start_id = pad_id, eos_id, decoder_start_id
        self.decode_text, self.generation = decode_text, generation

    def collate(self, indices: list[int], train: bool) -> LMBatch:
        sources, targets = self.train_pairs if train else self.val_pairs
        return collate_seq2seq([sources[i] for i in indices], [targets[i] for i in indices], pad_id=self.pad_id,
                               decoder_start_id=self.decoder_start_id, eos_id=self.eos_id)

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor:
        return token_cross_entropy(call_encoder_decoder(model, batch), batch)

    def generate(self, model: nn.Module, sources: list[Ids]) -> list[Ids]:
        return encoder_decoder_outputs(model, sources, self.generation, self.eos_id, self.decoder_start_id, self.pad_id)

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]:
        """Teacher-forced loss, then BLEU, chrF, ROUGE and exact match of generated outputs."""
        batches = (self.collate(ix, train=False) for ix in sequential_batches(len(self.val_pairs[0]), EVAL_BATCH_SIZE))
        metrics = evaluate_batches(model, batches, call_encoder_decoder)
        return {"loss": metrics["loss"], **self.generation_scores(model, *self.val_pairs)}

    def generation_scores(self, model: nn.Module, sources: list[Ids], targets: list[Ids]) -> dict[str, float]:
        """Text metrics of the model's outputs for ``sources`` against ``targets``."""
        outputs = generate_in_batches(lambda batch: self.generate(model, batch), sources)
        return text_scores([self.decode_text(o) for o in outputs], [self.decode_text(t) for t in targets])


class PromptSeq2SeqTask(Seq2SeqTask):
    """A decoder-only model as seq2seq: each example is ``prompt + target + EOS``, the prompt
    being the source in the prompt format; the loss covers the target tokens (and EOS) only."""

    def collate(self, indices: list[int], train: bool) -> LMBatch:
        prompts, targets = self.train_pairs if train else self.val_pairs
        return prompt_target_batch([prompts[i] for i in indices], [targets[i] for i in indices],
                                   self.eos_id, self.pad_id)

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor:
        return token_cross_entropy(call_decoder(model, batch), batch)

    def generate(self, model: nn.Module, sources: list[Ids]) -> list[Ids]:
        return decoder_outputs(model, sources, self.generation, self.eos_id, self.pad_id)

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]:
        batches = (self.collate(ix, train=False) for ix in sequential_batches(len(self.val_pairs[0]), EVAL_BATCH_SIZE))
        metrics = evaluate_batches(model, batches, call_decoder)
        return {"loss": metrics["loss"], **self.generation_scores(model, *self.val_pairs)}


def prompt_target_batch(prompts: list[Ids], targets: list[Ids], eos_id: int, pad_id: int) -> LMBatch:
    """Decoder inputs (B, T) = (prompt + target + EOS) minus the last token, right-padded;
    labels (B, T) = the next tokens, IGNORE_INDEX on the prompt's and on padding."""
    inputs, labels = [], []
    for prompt, target in zip(prompts, targets):
        sequence = torch.tensor(prompt + target + [eos_id])
        label = sequence[1:].clone()
        label[: len(prompt) - 1] = IGNORE_INDEX  # position t predicts token t+1: prompt tokens are given
        inputs.append(sequence[:-1])
        labels.append(label)
    input_ids = pad_batch(inputs, pad_id)  # (B, T)
    return LMBatch(input_ids.input_ids, pad_batch(labels, IGNORE_INDEX).input_ids)


def encoder_decoder_outputs(model: nn.Module, sources: list[Ids], generation: GenerationConfig, eos_id: int,
                            decoder_start_id: int, pad_id: int) -> list[Ids]:
    """Greedy or beam outputs of an encoder-decoder for tokenised sources (EOS appended, as in
    training), without the EOS."""
    inputs = [source + [eos_id] for source in sources]
    outputs = generate_seq2seq(model, inputs, generation, decoder_start_id, pad_id).sequences
    return [strip_eos(ids, eos_id) for ids in outputs]


def decoder_outputs(model: nn.Module, prompts: list[Ids], generation: GenerationConfig, eos_id: int,
                    pad_id: int) -> list[Ids]:
    """Continuations of formatted prompts by a decoder, up to (without) EOS."""
    outputs = generate_batch(model, prompts, generation, pad_id).sequences
    return [strip_eos(ids, eos_id) for ids in outputs]


def strip_eos(ids: Ids, eos_id: int) -> Ids:
    """``ids`` up to (without) the first EOS."""
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def generate_in_batches(generate: Callable[[list[Ids]], list[Ids]], sources: list[Ids]) -> list[Ids]:
    outputs: list[Ids] = []
    for indices in sequential_batches(len(sources), EVAL_BATCH_SIZE):
        outputs += generate([sources[i] for i in indices])
    return outputs


def text_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """BLEU and chrF (sacrebleu, 0-100), ROUGE-1/2/L/Lsum F-measures (rouge-score with stemming,
    0-1) and exact match of generated targets against the references."""
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references)
    return {
        "bleu": bleu(hypotheses, references)["bleu"],
        "chrf": chrf(hypotheses, references)["chrf"],
        **rouge(hypotheses, references),
        "exact_match": exact,
    }


# ----------------------------------------------------------------------------- causal LM
class CausalLMTask(ExampleTask):
    """Continued pretraining: documents packed with EOS into rows of context + 1 tokens."""

    def __init__(self, plan: EpochPlan, train_rows: torch.Tensor, val_rows: torch.Tensor):
        super().__init__(plan, [train_rows.size(1) - 1] * train_rows.size(0))
        self.train_rows, self.val_rows = train_rows, val_rows  # (N, T+1) ids, PAD_SEGMENT-marked below

    def collate(self, indices: list[int], train: bool) -> LMBatch:
        rows = (self.train_rows if train else self.val_rows)[indices]  # (B, 2, T+1): ids and segments
        ids, segments = rows[:, 0], rows[:, 1]
        labels = ids[:, 1:].masked_fill(segments[:, 1:] == PAD_SEGMENT, IGNORE_INDEX)  # (B, T)
        return LMBatch(ids[:, :-1], labels)

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor:
        return token_cross_entropy(call_decoder(model, batch), batch)

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]:
        """Loss, perplexity and next-token accuracy over every validation row."""
        batches = (self.collate(ix, train=False) for ix in sequential_batches(self.val_rows.size(0), EVAL_BATCH_SIZE))
        return evaluate_batches(model, batches, call_decoder)


def packed_rows(documents: list[Ids], context: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """Documents packed with EOS into rows of ``context + 1`` tokens: (N, 2, context + 1) holding
    each row's ids and its segment ids (PAD_SEGMENT on the last row's padding)."""
    packed = pack_documents(documents, context + 1, eos_id, pad_id)
    return torch.stack([packed.input_ids, packed.segment_ids], dim=1)


# ----------------------------------------------------------------------------- chat
class ChatTask(ExampleTask):
    """Supervised fine-tuning on conversations rendered with the chat template: next-token
    prediction whose loss covers the assistant's replies (content and end-of-turn token) only."""

    def __init__(self, plan: EpochPlan, train: list[tuple[Ids, Ids]], val: list[tuple[Ids, Ids]], pad_id: int):
        super().__init__(plan, [len(ids) - 1 for ids, _ in train])
        self.train_examples, self.val_examples, self.pad_id = train, val, pad_id

    def collate(self, indices: list[int], train: bool) -> LMBatch:
        examples = self.train_examples if train else self.val_examples
        return labelled_batch([examples[i] for i in indices], self.pad_id)

    def loss(self, model: nn.Module, batch: LMBatch) -> torch.Tensor:
        return token_cross_entropy(call_decoder(model, batch), batch)

    def evaluate(self, model: nn.Module, num_batches: int, seed: int) -> dict[str, float]:
        """Loss, perplexity and accuracy on the assistant's tokens of every validation conversation."""
        batches = (self.collate(ix, train=False) for ix in sequential_batches(len(self.val_examples), EVAL_BATCH_SIZE))
        return evaluate_batches(model, batches, call_decoder)


def labelled_batch(examples: list[tuple[Ids, Ids]], pad_id: int) -> LMBatch:
    """(ids, labels) examples aligned position by position → decoder inputs (B, T) = ids minus the
    last token, right-padded; labels (B, T) = the labels shifted by one, IGNORE_INDEX on padding."""
    inputs = [torch.tensor(ids[:-1]) for ids, _ in examples]
    labels = [torch.tensor(labels[1:]) for _, labels in examples]
    return LMBatch(pad_batch(inputs, pad_id).input_ids, pad_batch(labels, IGNORE_INDEX).input_ids)
