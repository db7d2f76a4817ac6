"""estimated_parameter_count: a lower bound on what build_model allocates, computed without it."""

from __future__ import annotations

import pytest

from lmlab.models import build_model
from lmlab.models.config import ModelConfig, MoEConfig, estimated_parameter_count

SMALL = dict(vocab_size=65, n_layer=2, n_head=2, d_model=32, context_length=32, rnn_hidden=48)


@pytest.mark.parametrize("fields", [
    {}, {"position": "rope", "ffn": "swiglu", "n_kv_heads": 1}, {"backbone": "encoder"},
    {"backbone": "encoder-decoder", "position": "t5"}, {"tie_embeddings": False},
    {"moe": MoEConfig(num_experts=4)}, {"arch": "gru"}, {"arch": "gru", "backbone": "encoder-decoder"},
], ids=repr)
def test_the_estimate_is_a_close_lower_bound(fields):
    config = ModelConfig(**SMALL, **fields)
    built = sum(p.numel() for p in build_model(config).parameters())
    assert 0.7 * built <= estimated_parameter_count(config) <= built


def test_a_model_far_beyond_memory_is_estimated_without_allocating_it():
    config = ModelConfig(vocab_size=65, context_length=10**10)
    assert estimated_parameter_count(config) >= 10**10 * config.d_model
