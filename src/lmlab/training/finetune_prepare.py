"""Preparing a fine-tuning run: the model it starts from, the text → ids codec, the data read and
encoded into the task (with truncation counted), the new head, freezing and LoRA. Used by
:func:`lmlab.training.finetune.finetune`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop.bert import pretrained_pooler
from lmlab.interop.hub import resolve_model_path
from lmlab.models import ModelConfig, build_model
from lmlab.models.interface import DECODER, DECODER_CLASSIFIER, ENCODER, ENCODER_DECODER
from lmlab.tokenizers import HFTokenizer, Tokenizer, tokenizer_from_json
from lmlab.training.config import RunConfig
from lmlab.training.finetune_tasks import (
    CausalLMTask,
    ChatTask,
    ClassifyTask,
    ExampleTask,
    PromptSeq2SeqTask,
    Seq2SeqTask,
    packed_rows,
)
from lmlab.training.freezing import freeze, head_modules
from lmlab.training.lora import apply_lora
from lmlab.training.run import load_run
from lmlab.training.task_data import (
    EpochPlan,
    Truncation,
    chat_examples,
    read_classification,
    read_conversations,
    read_documents,
    read_pairs,
    split_indices,
)

if TYPE_CHECKING:
    from lmlab.training.finetune import FinetuneConfig

POOLINGS = ("cls", "mean")
# --pooling → the encoder head's pooling: cls is BERT's pooler (first token → dense → tanh), which
# BertForSequenceClassification and RoBERTa's head have, so a cls classifier exports exactly
BERT_POOLING = "cls-dense-tanh"
POOLING_HEADS = {"cls": BERT_POOLING, "mean": "mean"}
SOURCE_SLOT = "{source}"
UNBOUNDED_STEPS = 10**9  # the step budget of a run bounded by --max-time alone


# ----------------------------------------------------------------------------- text → ids
class Codec:
    """How a run turns its texts into ids: framing with special tokens (classify), the source
    prefix or prompt format (seq2seq)."""

    def __init__(self, tokenizer: Tokenizer, spec: dict[str, Any]):
        self.tokenizer, self.spec = tokenizer, spec

    def text(self, text: str) -> list[int]:
        """A text to classify, framed as the tokenizer frames one sequence ([CLS] … [SEP])."""
        if isinstance(self.tokenizer, HFTokenizer):
            return self.tokenizer.encode(text, add_special_tokens=True)
        return self.tokenizer.encode(text)

    def source(self, text: str) -> list[int]:
        """A seq2seq source: with the prefix, inside the prompt format for a decoder."""
        text = self.spec["source_prefix"] + text
        if self.spec["prompt_format"] is not None:
            text = self.spec["prompt_format"].replace(SOURCE_SLOT, text)
        return self.tokenizer.encode(text)

    def target(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


# ----------------------------------------------------------------------------- the run
@dataclass
class Prepared:
    """A fine-tuning run before training: model, tokenizer, the task and what the run stores."""

    model: nn.Module
    model_config: ModelConfig
    tokenizer: Tokenizer
    task: ExampleTask
    spec: dict[str, Any]
    truncated: int


# ----------------------------------------------------------------------------- preparing
@dataclass
class Base:
    """The model fine-tuning starts from."""

    model: nn.Module
    config: ModelConfig
    tokenizer: Tokenizer
    source: Path


def prepare(config: FinetuneConfig, resumed_state: dict[str, Any] | None, echo: Callable[[str], None]) -> Prepared:
    """The run ``config`` describes, ready to train: the base model (or, resuming, its architecture
    from ``resumed_state``), its task data and head, freezing and LoRA applied."""
    base = _resumed_base(config, resumed_state) if resumed_state else _loaded_base(config.model, echo)
    prepare_task = {"classify": _prepare_classify, "seq2seq": _prepare_seq2seq, "causal-lm": _prepare_causal_lm,
                    "chat": _prepare_chat}[config.task]
    prepared = prepare_task(config, base, resumed_state is not None)
    _adapt(config, prepared.model)
    if prepared.truncated:
        echo(f"truncated {prepared.truncated} examples to the model's context ({_context(prepared.model)} tokens)")
    return prepared


def _adapt(config: FinetuneConfig, model: nn.Module) -> None:
    """--freeze a part of the model, or LoRA adapters in place of its weights (seeded; a
    classifier's head stays trainable). A resumed run gets the same before its weights load."""
    if config.freeze is not None:
        freeze(model, config.freeze)
    lora = config.lora()
    if lora is not None:
        torch.manual_seed(config.seed)
        apply_lora(model, **lora)
        if config.task == "classify":
            for head in head_modules(model):
                head.requires_grad_(True)


def _loaded_base(path: str, echo: Callable[[str], None]) -> Base:
    """The model MODEL names; a Hugging Face Hub id becomes its local snapshot."""
    source = resolve_model_path(path)
    run = load_run(source, echo)
    return Base(run.model, run.config.model, run.tokenizer, source)


def _resumed_base(config: FinetuneConfig, state: dict[str, Any]) -> Base:
    """The architecture of a run being resumed (its weights come from the checkpoint)."""
    model_config = RunConfig.from_dict(state["config"]).model
    return Base(build_model(model_config), model_config, tokenizer_from_json(state["tokenizer"]), Path(config.model))


def _spec(config: FinetuneConfig, tokenizer: Tokenizer, **task_fields: Any) -> dict[str, Any]:
    special = tokenizer.special_tokens
    return {"task": config.task, "source_prefix": config.source_prefix, "prompt_format": config.prompt_format,
            "pad_id": special.get("pad", special.get("eos", 0)), "settings": dataclasses.asdict(config),
            **task_fields}


def _context(model: nn.Module) -> int | None:
    return model.max_positions


def _split(config: FinetuneConfig, count: int) -> tuple[list[int], list[int]] | None:
    """Training and validation indices of the training file, or None when --val names a file."""
    return None if config.val is not None else split_indices(count, config.val_fraction, config.seed)


def _pick(items: list, indices: list[int]) -> list:
    return [items[i] for i in indices]


def _train_and_val(config: FinetuneConfig, read: Callable[[str], list]) -> tuple[list, list]:
    """The training examples ``read`` from --data and the validation ones: from --val, or the
    seeded split of the training file."""
    examples = read(config.data)
    split = _split(config, len(examples))
    if split is None:
        return examples, read(config.val)
    return _pick(examples, split[0]), _pick(examples, split[1])


def _require_decoder(base: Base, task_does: str) -> None:
    """A one-line error unless the base model is a decoder (causal-lm, chat)."""
    if base.model.structure != DECODER:
        structure = base.model.structure
        raise LmlabError(f"{task_does} a decoder (GPT-2, Llama, an lmlab decoder run); {base.source} is "
                         f"a{'n' if structure[0] == 'e' else ''} {structure} model")


# classify --------------------------------------------------------------------
def _prepare_classify(config: FinetuneConfig, base: Base, resumed: bool) -> Prepared:
    _check_classifiable(config, base)
    train = read_classification(config.data, config.text_column, config.label_column)
    names = train.label_names
    split = _split(config, len(train))
    if split is None:
        val = read_classification(config.val, config.text_column, config.label_column, label_names=names)
        val_texts, val_labels = val.texts, val.labels
        train_texts, train_labels = train.texts, train.labels
    else:
        train_texts, train_labels = _pick(train.texts, split[0]), _pick(train.labels, split[0])
        val_texts, val_labels = _pick(train.texts, split[1]), _pick(train.labels, split[1])
    model, model_config = (base.model, base.config) if resumed else _classifier(base, len(names), config)
    codec = Codec(base.tokenizer, {})
    truncation = Truncation(_context(model) or UNBOUNDED_STEPS, config.truncate)
    train_ids = [truncation.apply(codec.text(t), f"{config.data}, data row", row) for row, t in enumerate(train_texts, 1)]
    val_ids = [truncation.apply(codec.text(t), "validation text", row) for row, t in enumerate(val_texts, 1)]
    spec = _spec(config, base.tokenizer, label_names=names)
    plan = EpochPlan([len(ids) for ids in train_ids], config.batch(), config.seed)
    task = ClassifyTask(plan, (train_ids, train_labels), (val_ids, val_labels), names, spec["pad_id"])
    return Prepared(model, model_config, base.tokenizer, task, spec, truncation.cut)


def _check_classifiable(config: FinetuneConfig, base: Base) -> None:
    """An encoder, or a Transformer decoder (last-token pooling, so no --pooling)."""
    structure = base.model.structure
    decoder = structure in (DECODER, DECODER_CLASSIFIER) and base.config.arch == "transformer"
    if structure != ENCODER and not decoder:
        raise LmlabError(
            f"classify fine-tunes an encoder (BERT, RoBERTa, an lmlab encoder run) or a Transformer decoder "
            f"(GPT-2, Llama, an lmlab decoder run); {base.source} is a{'n' if structure[0] == 'e' else ''} "
            f"{base.config.arch} {structure} model"
        )
    if decoder and config.pooling is not None:
        raise LmlabError("--pooling is for encoders; a decoder classifier reads its last real token, so drop --pooling")


def _default_pooling(tokenizer: Tokenizer) -> str:
    """``cls`` when the tokenizer puts a special token first ([CLS], <s>), else ``mean``."""
    if isinstance(tokenizer, HFTokenizer):
        framed, plain = tokenizer.encode("a", add_special_tokens=True), tokenizer.encode("a")
        if len(framed) > len(plain) and framed[0] in tokenizer.special_tokens.values():
            return "cls"
    return "mean"


def _classifier(base: Base, num_labels: int, config: FinetuneConfig) -> tuple[nn.Module, ModelConfig]:
    """A new classifier on the base model's backbone weights: an
    :class:`~lmlab.models.EncoderClassifier` (``config.pooling``) on an encoder, a
    :class:`~lmlab.models.DecoderClassifier` on a decoder. A base that is already a classifier
    with as many labels keeps its head (a ``…ForSequenceClassification``); a BERT directory's pooler
    seeds a cls head, as in ``BertForSequenceClassification.from_pretrained``."""
    if base.config.head == "classifier" and base.config.num_labels == num_labels:
        return base.model, base.config
    fields = {"head": "classifier", "num_labels": num_labels}
    if base.model.structure == ENCODER:
        fields["pooling"] = POOLING_HEADS[config.pooling or _default_pooling(base.tokenizer)]
    model_config = dataclasses.replace(base.config, **fields)
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    model.backbone.load_state_dict(base.model.backbone.state_dict())
    pooler = pretrained_pooler(base.source) if model_config.pooling == BERT_POOLING and base.source.is_dir() else None
    if pooler is not None:
        model.classifier.pooler.load_state_dict(pooler)
    return model, model_config


# seq2seq ---------------------------------------------------------------------
def _prepare_seq2seq(config: FinetuneConfig, base: Base, resumed: bool) -> Prepared:
    structure = base.model.structure
    if structure == ENCODER:
        raise LmlabError(f"seq2seq needs an encoder-decoder or a decoder; {base.source} is an encoder")
    if structure == DECODER and config.prompt_format is None:
        raise LmlabError(
            f"{base.source} is a decoder-only model: seq2seq on it needs --prompt-format, e.g. '{{source}}\\nTL;DR: '"
        )
    if structure == ENCODER_DECODER and config.prompt_format is not None:
        raise LmlabError("--prompt-format is for decoder-only models; use --source-prefix with an encoder-decoder")
    eos_id = _eos_id(base.tokenizer, "seq2seq")
    train_pairs, val_pairs = _train_and_val(
        config, lambda path: read_pairs(path, config.source_column, config.target_column))
    spec = _spec(config, base.tokenizer, eos_id=eos_id, decoder_start_id=_decoder_start_id(base))
    codec = Codec(base.tokenizer, spec)
    fit = _fit_prompt if structure == DECODER else _fit_pair
    truncation = Truncation(_context(base.model) or UNBOUNDED_STEPS, config.truncate)
    train = _encoded_pairs(train_pairs, codec, fit, truncation, f"{config.data}, data row")
    val = _encoded_pairs(val_pairs, codec, fit, truncation, "validation pair")
    plan = EpochPlan([len(s) + len(t) for s, t in zip(*train)], config.batch(), config.seed)
    kind = PromptSeq2SeqTask if structure == DECODER else Seq2SeqTask
    task = kind(plan, train, val, spec["pad_id"], eos_id, spec["decoder_start_id"], codec.decode,
                config.generation(eos_id))
    return Prepared(base.model, base.config, base.tokenizer, task, spec, truncation.cut)


Fit = Callable[[list[int], list[int], Truncation, str, int], tuple[list[int], list[int]]]


def _encoded_pairs(pairs: list, codec: Codec, fit: Fit, truncation: Truncation,
                   what: str) -> tuple[list[list[int]], list[list[int]]]:
    sources, targets = [], []
    for row, pair in enumerate(pairs, start=1):
        source, target = fit(codec.source(pair.source), codec.target(pair.target), truncation, what, row)
        sources.append(source)
        targets.append(target)
    return sources, targets


def _fit_pair(source: list[int], target: list[int], truncation: Truncation, what: str,
              row: int) -> tuple[list[int], list[int]]:
    """An encoder-decoder pair within the context, room left for each side's EOS."""
    limit = Truncation(truncation.max_tokens - 1, truncation.allowed)
    fitted = limit.apply(source, what, row), limit.apply(target, what, row)
    truncation.cut += bool(limit.cut)
    return fitted


def _fit_prompt(prompt: list[int], target: list[int], truncation: Truncation, what: str,
                row: int) -> tuple[list[int], list[int]]:
    """prompt + target + EOS within context + 1 tokens: the target keeps at most half the room,
    the prompt keeps its end (where the format's cue is)."""
    room = truncation.max_tokens  # the decoder reads prompt + target; it predicts the target and EOS
    if len(prompt) + len(target) <= room:
        return prompt, target
    if not truncation.allowed:
        raise LmlabError(f"{what} {row} has {len(prompt) + len(target) + 1} tokens, more than the model's "
                         f"{truncation.max_tokens + 1}; shorten it or drop --no-truncate")
    truncation.cut += 1
    target = target[: max(room // 2, room - len(prompt))]
    return prompt[-(room - len(target)):], target


def _eos_id(tokenizer: Tokenizer, task: str) -> int:
    """The token that ends a target or a document: the tokenizer's EOS, else its newline (a
    character vocabulary without special tokens)."""
    end = tokenizer.special_tokens.get("eos", tokenizer.token_to_id("\n"))
    if end is None:
        raise LmlabError(f"{task} needs an end-of-sequence token, and the model's tokenizer has none (nor a newline)")
    return end


def _decoder_start_id(base: Base) -> int:
    """config.json's ``decoder_start_token_id`` (a Hugging Face model), else pad, bos or eos."""
    hf_config = base.source / "config.json"
    if hf_config.is_file():
        value = json.loads(hf_config.read_text(encoding="utf-8")).get("decoder_start_token_id")
        if isinstance(value, int):
            return value
    special = base.tokenizer.special_tokens
    return next((special[role] for role in ("pad", "bos", "eos") if role in special), 0)


# causal LM -------------------------------------------------------------------
def _prepare_causal_lm(config: FinetuneConfig, base: Base, resumed: bool) -> Prepared:
    _require_decoder(base, "causal-lm continues")
    eos_id = _eos_id(base.tokenizer, "causal-lm")
    documents, val_documents = _train_and_val(config, lambda path: read_documents(path, config.text_column))
    spec = _spec(config, base.tokenizer, eos_id=eos_id)
    context = _context(base.model) or 256
    encode = base.tokenizer.encode
    train_rows = packed_rows([encode(d) for d in documents], context, eos_id, spec["pad_id"])
    val_rows = packed_rows([encode(d) for d in val_documents], context, eos_id, spec["pad_id"])
    plan = EpochPlan([context] * train_rows.size(0), config.batch(), config.seed)
    task = CausalLMTask(plan, train_rows, val_rows)
    return Prepared(base.model, base.config, base.tokenizer, task, spec, 0)


# chat ------------------------------------------------------------------------
def _prepare_chat(config: FinetuneConfig, base: Base, resumed: bool) -> Prepared:
    _require_decoder(base, "chat fine-tunes")
    if getattr(base.tokenizer, "chat_template", None) is None:
        raise LmlabError(f"the tokenizer of {base.source} has no chat template; fine-tune a chat model "
                         "(chat_template in its tokenizer_config.json) or use --task causal-lm")
    conversations, val_conversations = _train_and_val(
        config, lambda path: read_conversations(path, config.messages_column))
    truncation = Truncation((_context(base.model) or UNBOUNDED_STEPS) + 1, config.truncate)  # inputs + the last label
    train = chat_examples(base.tokenizer, conversations, truncation, f"{config.data}, conversation")
    val = chat_examples(base.tokenizer, val_conversations, truncation, "validation conversation")
    spec = _spec(config, base.tokenizer)
    plan = EpochPlan([len(ids) for ids, _ in train], config.batch(), config.seed)
    task = ChatTask(plan, train, val, spec["pad_id"])
    return Prepared(base.model, base.config, base.tokenizer, task, spec, truncation.cut)
