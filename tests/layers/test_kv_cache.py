"""The static KV cache: in-place writes and the beam-search row reorder (rows copied, or followed
through a shared table the native attention kernel reads)."""

import pytest
import torch

from lmlab.kernels import load_native, native_status
from lmlab.layers.kv_cache import KVCache, reorder_layers

native = pytest.mark.skipif(load_native() is None, reason=f"native kernel unavailable: {native_status()}")


def filled_cache(rows=4, length=6):
    cache = KVCache(rows, 2, 10, 3)
    k = torch.randn(rows, 2, length, 3)
    v = torch.randn(rows, 2, length, 3)
    keys, values = cache.update(0, k, v)
    assert torch.equal(keys, k) and torch.equal(values, v)
    return cache, k, v


def test_reorder_matches_gathering_the_rows():
    for index in ([0, 1, 2, 3], [3, 3, 0, 1], [1, 0, 3, 2], [2, 2, 2, 2]):
        cache, k, v = filled_cache()
        beyond = cache.keys[:, :, 6:].clone()
        index = torch.tensor(index)
        cache.reorder(index, length=6)
        assert torch.equal(cache.keys[:, :, :6], k[index]) and torch.equal(cache.values[:, :, :6], v[index])
        assert torch.equal(cache.keys[:, :, 6:], beyond)  # positions past ``length`` are not touched


def test_reorder_of_all_positions():
    cache, k, _ = filled_cache()
    before = cache.keys.clone()
    cache.reorder(torch.tensor([1, 1, 0, 3]))
    assert torch.equal(cache.keys, before[[1, 1, 0, 3]])


def beam_steps(caches, attend, steps=6, rows=4, seed=0):
    """Drive ``caches`` (one per layer) like beam search: write a position, attend, reorder;
    return every step's attention outputs."""
    g = torch.Generator().manual_seed(seed)
    outputs = []
    for pos in range(steps):
        new = [(torch.randn(rows, 2, 1, 3, generator=g), torch.randn(rows, 2, 1, 3, generator=g)) for _ in caches]
        q = torch.randn(rows, 2, 1, 3, generator=g)
        outputs.append([attend(cache, q, k, v, pos) for cache, (k, v) in zip(caches, new)])
        reorder_layers(caches, torch.randint(0, rows, (rows,), generator=g), pos + 1)
    return outputs


def native_attend(cache, q, k, v, pos):
    out = cache.attend(q, k, v, pos, None)
    assert out is not None
    return out


def sdpa_attend(cache, q, k, v, pos):
    keys, values = cache.update(pos, k, v)
    return torch.nn.functional.scaled_dot_product_attention(q, keys, values).transpose(1, 2)


@native
def test_beams_followed_through_the_table_attend_like_moved_rows():
    table_caches = [KVCache(4, 2, 10, 3) for _ in range(2)]
    moved_caches = [KVCache(4, 2, 10, 3) for _ in range(2)]
    followed = beam_steps(table_caches, native_attend)
    moved = beam_steps(moved_caches, sdpa_attend)
    assert table_caches[0].sources is table_caches[1].sources and not table_caches[0].sources.identity
    assert moved_caches[0].sources is None  # nothing read natively: rows were copied
    for step_a, step_b in zip(followed, moved):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b)


@native
def test_falling_back_mid_search_reads_and_settles_through_the_table():
    g = torch.Generator().manual_seed(1)
    caches = [KVCache(3, 2, 12, 3) for _ in range(2)]
    reference = KVCache(3, 2, 12, 3)  # the same history, with rows copied
    for pos in range(5):
        k, v = torch.randn(3, 2, 1, 3, generator=g), torch.randn(3, 2, 1, 3, generator=g)
        reference.update(pos, k, v)
        q = torch.randn(3, 2, 1, 3, generator=g)
        for cache in caches:
            assert cache.attend(q, k, v, pos, None) is not None
        index = torch.randint(0, 3, (3,), generator=g)
        reorder_layers(caches, index, pos + 1)
        reference.reorder(index, pos + 1)
    for cache in caches:  # a step that could not use the kernel sees the reordered rows
        keys, values = cache.read(5)
        assert torch.equal(keys, reference.keys[:, :, :5]) and torch.equal(values, reference.values[:, :, :5])
    reorder_layers(caches, torch.tensor([2, 0, 1]), 5)  # not read natively: the rows settle, then move
    reference.reorder(torch.tensor([2, 0, 1]), 5)
    assert caches[0].sources.identity
    for cache in caches:
        assert torch.equal(cache.keys[:, :, :5], reference.keys[:, :, :5])
