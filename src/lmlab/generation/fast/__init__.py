"""The native decoding path, swapped in when decoding starts (see :mod:`~lmlab.generation.fast.swap`).

- ``swap``: :func:`fast_path` — a model's decoding twin with native modules, its head screen and draft;
- ``modules``: the native linear layer and self-attention cache step;
- ``block``: the fused pre-norm block (one native call per block per step);
- ``head_screen``: exact top-k logits from an int8 copy of the LM head;
- ``draft``: the int8 draft of speculative decoding;
- ``rows``: beam search's row table over the KV caches.
"""

from lmlab.generation.fast.head_screen import MAX_CANDIDATES, ScreenedHead
from lmlab.generation.fast.swap import FastPath, fast_path

__all__ = ["MAX_CANDIDATES", "FastPath", "ScreenedHead", "fast_path"]
