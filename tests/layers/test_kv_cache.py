"""The static KV cache: in-place writes and the beam-search row reorder (the rows that change are copied)."""

import torch

from lmlab.layers.kv_cache import KVCache, reorder_rows


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


def test_reorder_rows_moves_every_layer_alike():
    caches = [filled_cache()[0] for _ in range(2)]
    before = [c.keys.clone() for c in caches]
    reorder_rows(caches, torch.tensor([2, 0, 0, 3]), 6)
    for cache, old in zip(caches, before):
        assert torch.equal(cache.keys[:, :, :6], old[[2, 0, 0, 3], :, :6])
