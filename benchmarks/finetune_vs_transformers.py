"""Fine-tuning speed: lmlab's training step vs transformers', same weights, batches and settings.

Cases (random weights built by transformers, saved and loaded into lmlab through
``lmlab.interop.load_hf``, so both hold the same parameters; float32 on the CPU, train mode with
the configs' dropout):

* ``classify-bert-base``: BertForSequenceClassification shapes (12 layers, 768 dims, 2 labels),
  sequences of 128 tokens, batch 16;
* ``seq2seq-t5-small``: T5ForConditionalGeneration shapes (6 + 6 layers, 512 dims), sources of 256
  tokens, targets of 64, batch 8.

lmlab's step is the one ``lmlab finetune`` runs: the task's batch (``ClassifyTask`` /
``Seq2SeqTask`` from :mod:`lmlab.training.finetune_tasks`), the task's loss, backward, gradient
clipping at 1.0 and the trainer's AdamW (:func:`lmlab.training.optim.build_optimizer`). The
transformers step feeds the same batch tensors to the model with ``labels=`` and takes the same
clipping and AdamW (fused, as lmlab's). Steps alternate between the two after a warm-up step
each; one JSON line per case:

    {"case": ..., "lmlab_steps_per_s": ..., "transformers_steps_per_s": ..., "ratio": ..., "steps": ..., "threads": ...}

``--quick`` uses tiny shapes (a smoke test of the script). On a shared machine the figures move
with the load; the ratio, measured alternately in one run, is the figure to read.

    python benchmarks/finetune_vs_transformers.py [--quick] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from lmlab.interop import load_hf
from lmlab.training.config import TrainConfig
from lmlab.training.finetune_tasks import ClassifyTask, Seq2SeqTask
from lmlab.training.optim import build_optimizer
from lmlab.training.task_data import BatchSize, EpochPlan

GRAD_CLIP = 1.0
LR = 5e-5


@dataclass
class Case:
    name: str
    reference: torch.nn.Module  # the transformers model
    ours: torch.nn.Module  # the same weights in lmlab
    task: object  # the lmlab fine-tuning task that makes the batches and the loss
    reference_inputs: Callable[[object], dict]  # an lmlab batch → transformers' keyword arguments


def loaded(reference: torch.nn.Module) -> torch.nn.Module:
    """``reference`` saved and loaded into lmlab."""
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        return load_hf(folder).model


def classify_case(quick: bool) -> Case:
    import transformers

    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if quick else {}
    seq, batch = (32, 4) if quick else (128, 16)
    config = transformers.BertConfig(num_labels=2, **shape)
    torch.manual_seed(0)
    reference = transformers.BertForSequenceClassification(config)
    rows = torch.randint(1000, config.vocab_size, (batch * 4, seq)).tolist()
    labels = [i % 2 for i in range(len(rows))]
    plan = EpochPlan([seq] * len(rows), BatchSize(examples=batch), seed=0)
    task = ClassifyTask(plan, (rows, labels), (rows[:batch], labels[:batch]), ["no", "yes"], pad_id=0)
    return Case("classify-bert-base", reference, loaded(reference), task, lambda b: {
        "input_ids": b.input_ids, "attention_mask": b.attention_mask.long(), "labels": b.labels})


def seq2seq_case(quick: bool) -> Case:
    import transformers

    shape = dict(d_model=64, d_ff=128, num_layers=2, num_heads=2, d_kv=32, vocab_size=1000) if quick else {}
    source, target, batch = (32, 8, 4) if quick else (256, 64, 8)
    config = transformers.T5Config(**shape)  # the defaults are t5-small's
    torch.manual_seed(0)
    reference = transformers.T5ForConditionalGeneration(config)
    count = batch * 4
    sources = torch.randint(3, config.vocab_size, (count, source - 1)).tolist()  # + EOS: `source` tokens
    targets = torch.randint(3, config.vocab_size, (count, target - 1)).tolist()
    plan = EpochPlan([source + target] * count, BatchSize(examples=batch), seed=0)
    task = Seq2SeqTask(plan, (sources, targets), (sources[:batch], targets[:batch]), pad_id=0, eos_id=1,
                       decoder_start_id=0, decode_text=str, generation=None)
    return Case("seq2seq-t5-small", reference, loaded(reference), task, lambda b: {
        "input_ids": b.input_ids, "attention_mask": b.attention_mask.long(),
        "decoder_input_ids": b.decoder_input_ids, "decoder_attention_mask": b.decoder_attention_mask.long(),
        "labels": b.labels})


def lmlab_step(case: Case, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """The trainer's step (grad_accum 1) over the task's next batch."""
    def step() -> None:
        batch = case.task.train_batch(None)
        case.task.loss(case.ours, batch).backward()
        torch.nn.utils.clip_grad_norm_(case.ours.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def transformers_step(case: Case, optimizer: torch.optim.Optimizer, batches: list) -> Callable[[], None]:
    """transformers' loss (``labels=``) over the same batches, then the same clipping and AdamW."""
    cursor = iter(range(10**9))

    def step() -> None:
        batch = batches[next(cursor) % len(batches)]
        case.reference(**case.reference_inputs(batch)).loss.backward()
        torch.nn.utils.clip_grad_norm_(case.reference.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def run_case(case: Case, steps: int) -> dict:
    case.reference.train()
    case.ours.train()
    train = TrainConfig(lr=LR, weight_decay=0.0, beta1=0.9, beta2=0.999)
    ours = lmlab_step(case, build_optimizer(case.ours, train))
    batches = [case.task.collate(case.task.plan.batch(i), train=True) for i in range(len(case.task.plan.epoch(0)))]
    theirs = transformers_step(case, torch.optim.AdamW(case.reference.parameters(), lr=LR, betas=(0.9, 0.999),
                                                       weight_decay=0.0, fused=True), batches)
    ours(), theirs()  # warm-up: allocation, optimizer state
    ours_s, theirs_s = 0.0, 0.0
    for _ in range(steps):
        ours_s += timed(ours)
        theirs_s += timed(theirs)
    return {"case": case.name, "lmlab_steps_per_s": round(steps / ours_s, 4),
            "transformers_steps_per_s": round(steps / theirs_s, 4), "ratio": round(theirs_s / ours_s, 3),
            "steps": steps, "threads": torch.get_num_threads(), "dtype": "float32", "device": "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test of the script")
    parser.add_argument("--steps", type=int, help="timed steps per side (default 5, quick 2)")
    args = parser.parse_args()
    steps = args.steps or (2 if args.quick else 5)
    for make in (classify_case, seq2seq_case):
        print(json.dumps(run_case(make(args.quick), steps)), flush=True)


if __name__ == "__main__":
    main()
