"""Beam search's row table: beams followed through it attend like beams whose rows were moved,
and settling it moves the rows where it points."""

import pytest
import torch

from lmlab.generation import BeamSearch, GenerationConfig, generate_batch
from lmlab.generation.fast.rows import RowTable
from lmlab.generation.session import DecoderSession
from lmlab.kernels import decode_attention, load_native, native_status
from lmlab.layers.kv_cache import KVCache, reorder_rows
from lmlab.models import ModelConfig, build_model

pytestmark = pytest.mark.skipif(load_native() is None, reason=f"native kernel unavailable: {native_status()}")


def beam_steps(caches, attend, reorder, steps=6, rows=4, seed=0):
    """Drive ``caches`` (one per layer) like beam search: write a position, attend, reorder;
    return every step's attention outputs."""
    g = torch.Generator().manual_seed(seed)
    outputs = []
    for pos in range(steps):
        new = [(torch.randn(rows, 2, 1, 3, generator=g), torch.randn(rows, 2, 1, 3, generator=g)) for _ in caches]
        q = torch.randn(rows, 2, 1, 3, generator=g)
        outputs.append([attend(cache, q, k, v, pos) for cache, (k, v) in zip(caches, new)])
        reorder(torch.randint(0, rows, (rows,), generator=g), pos + 1)
    return outputs


def sdpa_attend(cache, q, k, v, pos):
    keys, values = cache.update(pos, k, v)
    return torch.nn.functional.scaled_dot_product_attention(q, keys, values).transpose(1, 2)


def test_beams_followed_through_the_table_attend_like_moved_rows():
    table_caches = [KVCache(4, 2, 10, 3) for _ in range(2)]
    moved_caches = [KVCache(4, 2, 10, 3) for _ in range(2)]
    table = RowTable(table_caches)

    def native_attend(cache, q, k, v, pos):
        out = decode_attention(q, k, v, cache.keys, cache.values, pos, table.for_kernels())
        assert out is not None
        return out

    followed = beam_steps(table_caches, native_attend, table.follow)
    moved = beam_steps(moved_caches, sdpa_attend, lambda index, length: reorder_rows(moved_caches, index, length))
    assert not table.identity
    for step_a, step_b in zip(followed, moved):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b)


def test_settling_moves_every_layer_to_where_the_table_points():
    g = torch.Generator().manual_seed(1)
    caches = [KVCache(3, 2, 12, 3) for _ in range(2)]
    reference = KVCache(3, 2, 12, 3)  # the same history, with rows copied
    table = RowTable(caches)
    for pos in range(5):
        k, v = torch.randn(3, 2, 1, 3, generator=g), torch.randn(3, 2, 1, 3, generator=g)
        reference.update(pos, k, v)
        for cache in caches:
            cache.update(pos, k, v)
        index = torch.randint(0, 3, (3,), generator=g)
        table.follow(index, pos + 1)
        reference.reorder(index, pos + 1)
    table.settle()
    assert table.identity and table.for_kernels() is None
    for cache in caches:
        assert torch.equal(cache.keys[:, :, :5], reference.keys[:, :, :5])
        assert torch.equal(cache.values[:, :, :5], reference.values[:, :, :5])


def test_beam_search_of_a_model_whose_attention_cannot_read_the_table_moves_rows_instead():
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=40, n_layer=2, n_head=4, d_model=32, context_length=32,
                                    position="alibi", dropout=0.0)).eval()
    config = GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=8)
    session = DecoderSession(model, torch.tensor([[1, 2, 3]]), None, 8, copies=3)
    with torch.inference_mode():
        fast = BeamSearch().run(session, torch.tensor([[1, 2, 3]] * 3), config, None, 0).sequences
    assert session.row_table.fell_back  # ALiBi's biases keep the attention in PyTorch
    handle = model.lm_head.register_forward_hook(lambda module, args, output: None)  # plain modules
    assert generate_batch(model, [[1, 2, 3]], config).sequences == fast
    handle.remove()
