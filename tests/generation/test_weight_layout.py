"""Decoding's weight layout: same values and outputs, tied weights stay tied, checkpoints still save."""

import pytest

import torch
from torch import nn

from lmlab.generation import GenerationConfig, generate
from lmlab.generation.session import decoding_model
from lmlab.generation.weight_layout import is_input_major, prepare_for_decoding, store_input_major
from lmlab.kernels import load_native
from lmlab.models import ModelConfig, build_model
from lmlab.training import checkpoint as ckpt


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, n_layer=2, n_head=2, d_model=16, context_length=32, dropout=0.0)
    return build_model(config).eval()


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def test_weights_become_input_major_with_the_same_values_and_outputs():
    model = tiny_model()
    ids = torch.tensor([[1, 2, 3, 4]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = model(ids)
    store_input_major(model)
    assert all(is_input_major(w) for w in linear_weights(model))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(ids), logits)
    assert model.lm_head.weight is model.backbone.tok_emb.weight  # still tied
    storage = [w.data_ptr() for w in linear_weights(model)]
    store_input_major(model)  # idempotent: nothing moves again
    assert [w.data_ptr() for w in linear_weights(model)] == storage


def test_other_dtypes_and_models_in_training_are_left_alone():
    model = tiny_model().to(torch.bfloat16)
    store_input_major(model)
    assert not any(is_input_major(w) for w in linear_weights(model))
    training = tiny_model().train()
    decoding_model(training)
    assert not any(is_input_major(w) for w in linear_weights(training))


def test_decoding_layout_suits_the_kernel_that_will_run():
    model = prepare_for_decoding(tiny_model())
    native = load_native() is not None  # the native kernel reads (out, in) rows; MKL prefers (in, out)
    assert all(is_input_major(w) != native for w in linear_weights(model))


@pytest.mark.parametrize("transposed", [False, True])
def test_checkpoints_save_weights_of_either_layout(tmp_path, transposed):
    model = tiny_model()
    if transposed:
        store_input_major(model)
    out = generate(model, [1, 2, 3], GenerationConfig(max_new_tokens=5))
    saved = ckpt.save_checkpoint(tmp_path, 1, model, None, {"config": {}})
    restored = tiny_model()
    with torch.no_grad():
        for p in restored.parameters():
            p.zero_()
    ckpt.load_weights(saved, restored)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert generate(restored, [1, 2, 3], GenerationConfig(max_new_tokens=5)) == out
