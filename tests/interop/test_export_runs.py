"""Runs trained as a user trains them — the shipped presets (bias-free) and the README's objective
runs — export with ``lmlab convert --to hf`` to the family that fits, and transformers gives the
logits lmlab gives. Classifier heads export with their labels."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch, perturbed  # noqa: E402

from lmlab.cli import main  # noqa: E402
from lmlab.interop import export_hf, load_hf  # noqa: E402
from lmlab.models import ModelConfig, build_model  # noqa: E402
from lmlab.tokenizers import CharTokenizer  # noqa: E402
from lmlab.training.run import load_run  # noqa: E402

TEXT = "".join(f"Line {i}: to be, or not to be, that is the question. Whether 'tis nobler.\n" for i in range(80))
TINY_RUN = ["--max-steps", "2", "--no-progress", "--set", "train.sample_chars=0", "train.eval_batches=1"]

# (name, lmlab train arguments, exported model_type, transformers auto class)
RUNS = [
    ("shakespeare-char", ["--preset", "shakespeare-char"], "gpt2", "AutoModelForCausalLM"),
    ("nanogpt-cpu", ["--preset", "nanogpt-cpu"], "gpt2", "AutoModelForCausalLM"),
    ("prefix-lm", ["--objective", "prefix-lm"], "gpt2", "AutoModelForCausalLM"),
    ("mlm", ["--objective", "mlm", "--set", "model.backbone=encoder"], "xlm-roberta-xl", "AutoModelForMaskedLM"),
    ("span-corruption", ["--objective", "span-corruption", "--set", "model.backbone=encoder-decoder", "model.position=t5"],
     "t5", "AutoModelForSeq2SeqLM"),
    ("bart", ["--objective", "bart", "--set", "model.backbone=encoder-decoder", "model.norm_placement=post"],
     "bart", "AutoModelForSeq2SeqLM"),
    ("ul2", ["--objective", "ul2", "--set", "model.backbone=encoder-decoder"], "blenderbot", "AutoModelForSeq2SeqLM"),
]


def cli(*argv) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    assert code == 0, err.getvalue()
    return out.getvalue()


def real_tokens(vocab_size: int, pad: int | None, lengths: list[int], seed: int = 0):
    """Right-padded ids with no pad id among the real tokens (RoBERTa-style positions skip pads)."""
    ids, mask = padded_batch(vocab_size, lengths, seed=seed, low=0)
    if pad is not None:
        ids = ids.masked_fill(ids == pad, (pad + 1) % vocab_size).masked_fill(~mask, pad)
    return ids, mask


def logits_of_both(run, ref, config):
    """lmlab's and transformers' logits (and the mask of positions to compare) on the same batch."""
    pad = run.tokenizer.special_tokens.get("pad")
    ids, mask = real_tokens(config.vocab_size, pad, [40, 17, 29])
    with torch.no_grad():
        if config.backbone == "decoder":
            return run.model(ids), ref(input_ids=ids).logits, None
        if config.backbone == "encoder":
            return run.model(ids, attention_mask=mask), ref(input_ids=ids, attention_mask=mask.long()).logits, mask
        dec, _ = real_tokens(config.vocab_size, pad, [23, 23, 23], seed=1)
        ours = run.model(ids, dec, attention_mask=mask)
        return ours, ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec).logits, None


@pytest.mark.parametrize("name,train_args,model_type,auto", RUNS, ids=[r[0] for r in RUNS])
def test_trained_runs_export_with_the_same_logits(tmp_path, name, train_args, model_type, auto):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    run_dir, hf_dir = tmp_path / "run", tmp_path / "hf"
    cli("train", *train_args, "--data", corpus, "--out", run_dir, *TINY_RUN)
    summary = json.loads(cli("convert", run_dir, hf_dir, "--to", "hf"))
    assert summary["format"] == model_type
    run = load_run(run_dir)
    assert run.config.model.bias is False  # what the presets ship
    ref = getattr(transformers, auto).from_pretrained(hf_dir).eval()
    ours, theirs, mask = logits_of_both(run, ref, run.config.model)
    assert max_diff(ours, theirs, mask) <= TOL


TOKENIZER = CharTokenizer.from_text("hello world\nthe quick brown fox", special_tokens={"pad": "<pad>", "mask": "<mask>"})
ROBERTA_TOKENIZER = CharTokenizer.from_text(
    "hello world\nthe quick brown fox", special_tokens={"pad": "<pad>", "bos": "<s>", "eos": "</s>", "mask": "<mask>"}
)
ENCODER = dict(backbone="encoder", vocab_size=ROBERTA_TOKENIZER.vocab_size, n_layer=2, n_head=4, d_model=32, d_ff=48,
               context_length=48, norm_placement="post", dropout=0.0)


@pytest.mark.parametrize("tokenizer,bias,model_type", [
    (TOKENIZER, True, "bert"), (TOKENIZER, False, "bert"),
    (ROBERTA_TOKENIZER, True, "roberta"), (ROBERTA_TOKENIZER, False, "roberta"),
], ids=["bert", "bert-bias-free", "roberta", "roberta-bias-free"])
@pytest.mark.parametrize("head,auto", [("lm", "AutoModelForMaskedLM"), ("none", "AutoModel")])
def test_encoders_export_as_roberta_when_their_tokenizer_is_roberta_shaped(tmp_path, tokenizer, bias, model_type, head, auto):
    torch.manual_seed(0)
    config = ModelConfig(**{**ENCODER, "vocab_size": tokenizer.vocab_size, "bias": bias, "head": head})
    model = perturbed(build_model(config))
    assert export_hf(model, config, tokenizer, tmp_path)["format"] == model_type
    ref = getattr(transformers, auto).from_pretrained(tmp_path).eval()
    ids, mask = real_tokens(config.vocab_size, tokenizer.special_tokens["pad"], [40, 17, 29])
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask.long())
        theirs = out.logits if head == "lm" else out.last_hidden_state
        assert max_diff(model(ids, attention_mask=mask), theirs, mask) <= TOL
    back = load_hf(tmp_path)  # lmlab reads BERT and RoBERTa back
    with torch.no_grad():
        assert max_diff(back.model(ids, attention_mask=mask), model(ids, attention_mask=mask), mask) <= TOL


@pytest.mark.parametrize("tokenizer,placement,cls_name", [
    (TOKENIZER, "post", "BertForSequenceClassification"),
    (ROBERTA_TOKENIZER, "post", "RobertaForSequenceClassification"),
    (TOKENIZER, "pre", "XLMRobertaXLForSequenceClassification"),
], ids=["bert", "roberta", "xlm-roberta-xl"])
def test_classifiers_export_with_their_labels(tmp_path, tokenizer, placement, cls_name):
    torch.manual_seed(0)
    config = ModelConfig(**{**ENCODER, "vocab_size": tokenizer.vocab_size, "norm_placement": placement, "bias": False,
                            "head": "classifier", "pooling": "cls-dense-tanh", "num_labels": 3})
    model = perturbed(build_model(config))
    export_hf(model, config, tokenizer, tmp_path / "named", labels=["negative", "neutral", "positive"])
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "named").eval()
    assert type(ref).__name__ == cls_name
    assert ref.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    ids, mask = real_tokens(config.vocab_size, tokenizer.special_tokens["pad"], [40, 17, 29])
    with torch.no_grad():
        assert max_diff(model(ids, attention_mask=mask), ref(input_ids=ids, attention_mask=mask.long()).logits) <= TOL
    export_hf(model, config, tokenizer, tmp_path / "unnamed")
    unnamed = transformers.AutoConfig.from_pretrained(tmp_path / "unnamed")
    assert unnamed.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_a_converted_classifier_keeps_its_labels_through_a_run(tmp_path):
    """HF classifier → lmlab run (the labels kept in its state) → HF again, id2label intact."""
    torch.manual_seed(0)
    labels = {0: "ham", 1: "spam"}
    hf_config = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=48, max_position_embeddings=32, id2label=labels,
                                        label2id={v: k for k, v in labels.items()})
    source = tmp_path / "source"
    transformers.BertForSequenceClassification(hf_config).eval().save_pretrained(source)
    (source / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]))
    cli("convert", source, tmp_path / "run")
    cli("convert", tmp_path / "run", tmp_path / "back", "--to", "hf")
    assert transformers.AutoConfig.from_pretrained(tmp_path / "back").id2label == labels


def test_a_classifier_with_the_wrong_number_of_labels_is_refused(tmp_path):
    from lmlab.errors import LmlabError

    config = ModelConfig(**{**ENCODER, "head": "classifier", "pooling": "cls-dense-tanh", "num_labels": 3})
    with pytest.raises(LmlabError, match="3 classes but 2"):
        export_hf(build_model(config), config, TOKENIZER, tmp_path, labels=["a", "b"])


def test_a_classifier_pooling_unlike_bert_is_refused(tmp_path):
    from lmlab.errors import LmlabError

    config = ModelConfig(**{**ENCODER, "head": "classifier", "pooling": "mean"})
    with pytest.raises(LmlabError, match="pooling='mean'"):
        export_hf(build_model(config), config, TOKENIZER, tmp_path)
