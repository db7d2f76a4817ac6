"""freeze(): embeddings, encoder and all-but-head on decoder, encoder and encoder-decoder models."""

import pytest
import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, build_model
from lmlab.training.freezing import freeze

V, C, T = 20, 16, 12


def tiny(backbone: str, **overrides) -> nn.Module:
    fields = dict(backbone=backbone, vocab_size=V, n_layer=1, n_head=2, d_model=C, context_length=T, dropout=0.0)
    fields.update(overrides)
    torch.manual_seed(0)
    return build_model(ModelConfig(**fields))


def trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters(remove_duplicate=False)}


def test_embeddings_of_a_decoder_and_its_tied_head():
    model = tiny("decoder")
    assert freeze(model, "embeddings") == V * C + T * C  # token + learned positions
    frozen = names(model) - trainable(model)
    assert frozen == {"backbone.tok_emb.weight", "backbone.pos_emb.weight", "lm_head.weight"}  # the head is tied


def test_embeddings_of_both_stacks_of_an_encoder_decoder():
    model = tiny("encoder-decoder", share_embeddings=False, tie_embeddings=False)
    assert freeze(model, "embeddings") == 2 * (V * C + T * C)
    assert names(model) - trainable(model) == {
        f"{stack}.{part}.weight" for stack in ("encoder", "decoder") for part in ("tok_emb", "pos_emb")
    }


def test_encoder_of_a_classifier_leaves_the_head():
    model = tiny("encoder", head="classifier", num_labels=3)
    count = freeze(model, "encoder")
    assert count == sum(p.numel() for p in model.backbone.parameters())
    assert trainable(model) == {"classifier.classifier.weight", "classifier.classifier.bias"}


def test_encoder_of_an_encoder_decoder_leaves_the_decoder():
    model = tiny("encoder-decoder", share_embeddings=False)
    assert freeze(model, "encoder") == sum(p.numel() for p in model.encoder.parameters())
    assert trainable(model) == {name for name in names(model) if not name.startswith("encoder.")}


@pytest.mark.parametrize("backbone, overrides, head", [
    ("encoder", dict(head="classifier", num_labels=3), "classifier."),
    ("encoder", dict(tie_embeddings=False), "mlm_head."),
    ("encoder-decoder", dict(tie_embeddings=False), "lm_head."),
])
def test_all_but_head(backbone, overrides, head):
    model = tiny(backbone, **overrides)
    total = sum(p.numel() for p in model.parameters())
    head_size = sum(p.numel() for n, p in model.named_parameters() if n.startswith(head))
    assert freeze(model, "all-but-head") == total - head_size
    assert trainable(model) == {name for name in names(model) if name.startswith(head)}


def test_all_but_head_keeps_an_embedding_the_head_is_tied_to():
    model = tiny("decoder")
    freeze(model, "all-but-head")
    assert trainable(model) == {"lm_head.weight", "backbone.tok_emb.weight"}
    loss = model(torch.randint(0, V, (2, 5))).sum()
    loss.backward()
    assert all((p.grad is None) != p.requires_grad for p in model.parameters())


def test_gru_baseline_embeddings_and_head():
    model = tiny("decoder", arch="gru", rnn_hidden=16)
    assert freeze(model, "embeddings") == V * C
    freeze(model, "all-but-head")
    assert trainable(model) == {"head.weight", "head.bias"}


@pytest.mark.parametrize("model, what, message", [
    (lambda: tiny("decoder"), "encoder", "decoder-only model has no encoder to freeze"),
    (lambda: tiny("encoder", head="none"), "all-but-head", "EncoderModel has no head"),
    (lambda: tiny("decoder"), "head", "cannot freeze 'head'; choose one of embeddings, encoder, all-but-head"),
])
def test_bad_choices_are_one_line_errors(model, what, message):
    with pytest.raises(LmlabError, match=message) as info:
        freeze(model(), what)
    assert "\n" not in str(info.value)
