"""Native kernels for the hot spots PyTorch's libraries leave slow, built on first use.

:func:`skinny_linear` computes ``x · Wᵀ + b`` for 1–16 (:data:`BLOCK_ROWS`) rows of float32 ``x``
on the CPU — every matrix product of a decoding step. MKL streams a weight matrix at memory speed
for one row but takes much longer for 2–8 (batched greedy decoding, beam search); the kernel in
``skinny_linear.c`` reads the weights from memory once for all of them, and each row's result is
bitwise the same whichever rows it is computed with. :func:`skinny_linear_int8`
is the same product over an int8 weight with per-row scales, in exact integer arithmetic on
int16 activations. :func:`decode_attention` (``decode_attention.c``) is the attention of a few new
queries over a KV cache, reading each cached position from the row a table names, so that beam
search never moves cached keys. :func:`~lmlab.kernels.block.decode_block` (``decode_block.c``)
runs a whole pre-norm Transformer block for the tokens of a step in one call.
:func:`log_softmax_topk` gives each row's k best log-probabilities without writing the whole
log-softmax (a beam-search step).

:mod:`~lmlab.kernels.onednn_linear` is not C of ours: it runs float32 linear layers, forward and
backward, through the oneDNN library PyTorch bundles, where that beats PyTorch's MKL product (a
CPU with AVX-512); the trainer swaps it in for float32 steps on the CPU.

Modules: ``build`` compiles and loads the library, ``linear`` wraps the matrix products,
``attention`` the cache attention, ``block`` the whole block, ``topk`` the log-softmax top-k.
The modules that put them to work in a model are in :mod:`lmlab.generation.fast`.

The C sources ship with the package and are compiled once per machine with the system C compiler
(``$CC``, else ``cc``/``gcc``; ``-O3 -march=native -fopenmp``) into the lmlab cache, then loaded
with ctypes. It shares PyTorch's OpenMP runtime, so ``torch.set_num_threads`` applies to it.
Where it cannot be built (no compiler, a CPU without AVX2/FMA, a PyTorch not on GNU OpenMP, or
``LMLAB_NATIVE_KERNELS=0``) every caller falls back to PyTorch; :func:`native_status` says why.
"""

from lmlab.kernels.attention import decode_attention
from lmlab.kernels.build import BLOCK_ROWS, DISABLE_ENV, MAX_ROWS, load_native, native_status
from lmlab.kernels.topk import log_softmax_topk
from lmlab.kernels.linear import (
    int8_activation_range,
    quantize_rows,
    quantize_weight,
    skinny_linear,
    skinny_linear_int8,
    skinny_linear_int8_float,
)

__all__ = [
    "BLOCK_ROWS", "DISABLE_ENV", "MAX_ROWS", "decode_attention", "int8_activation_range", "load_native", "log_softmax_topk",
    "native_status", "quantize_rows", "quantize_weight", "skinny_linear", "skinny_linear_int8", "skinny_linear_int8_float",
]
