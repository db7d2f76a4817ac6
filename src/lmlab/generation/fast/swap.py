"""The one place the native path is swapped in: a model's decoding twin.

When decoding starts, :func:`fast_path` gives the model's :class:`FastPath`: a twin of the model
(a copy of its module tree over the very same parameters and buffers) in which every module the
native kernels run is replaced by its native version (:mod:`~lmlab.generation.fast.modules`,
:mod:`~lmlab.generation.fast.block`), plus what decoding derives from the weights (the head
screen, the int8 draft). The model itself is never changed, so training never meets a native
module. The twin is kept beside the model (not on it) and made again when a parameter is
replaced or moved.

A model keeps its plain modules (no fast path) while it is training, while a forward hook watches
any of its modules or attention is being captured (they expect the plain modules to run), and
where the native kernels cannot be had.
"""

from __future__ import annotations

import copy
import itertools
import weakref

import torch
from torch import nn

from lmlab.generation.fast.block import NativeBlock, runs_natively
from lmlab.generation.fast.draft import Int8Draft
from lmlab.generation.fast.head_screen import ScreenedHead
from lmlab.generation.fast.modules import NativeLinear, NativeSelfAttention, adopt
from lmlab.generation.fast.rows import RowTable
from lmlab.kernels import load_native
from lmlab.layers.attention import Attention, MultiHeadAttention
from lmlab.models.interface import DECODER, DecodingCache

_PATHS: weakref.WeakKeyDictionary[nn.Module, "FastPath"] = weakref.WeakKeyDictionary()


class FastPath:
    """A model's decoding twin and what decoding derives from its weights."""

    def __init__(self, model: nn.Module):
        self.layout = parameter_layout(model)
        self.twin = decoding_twin(model)
        self._screen: ScreenedHead | None = None
        self._draft: Int8Draft | None = None

    def screen(self) -> ScreenedHead | None:
        """The :class:`ScreenedHead` of a decoder's bias-free float32 CPU LM head (made again
        when the head's values changed), or None for other models."""
        twin = self.twin
        head = twin.lm_head if twin.structure == DECODER else None
        if not isinstance(head, nn.Linear) or head.bias is not None:
            return None
        if not head.weight.is_cpu or head.weight.dtype != torch.float32:
            return None
        if self._screen is None or not self._screen.is_current(head.weight):
            self._screen = ScreenedHead(head.weight)
        return self._screen

    def draft(self) -> Int8Draft | None:
        """The twin's :class:`Int8Draft` (made again when a weight changed); None without a screen."""
        screen = self.screen()
        if screen is None:
            return None
        if self._draft is None or not self._draft.is_current(self.twin):
            self._draft = Int8Draft(self.twin, screen)
        return self._draft

    @staticmethod
    def row_table(cache: DecodingCache) -> RowTable | None:
        """A :class:`RowTable` over ``cache``'s key/value caches, for beam search to reorder
        rows through; None for a cache without any (a GRU's state)."""
        caches = cache.kv_caches()
        return RowTable(caches) if caches else None


def fast_path(model: nn.Module) -> FastPath | None:
    """The model's :class:`FastPath` (made on first use, and again when its parameters were
    replaced or moved), or None where decoding runs the plain modules (see the module docstring)."""
    if model.training or load_native() is None or _watched(model):
        return None
    path = _PATHS.get(model)
    if path is None or path.layout != parameter_layout(model):
        path = _PATHS[model] = FastPath(model)
    return path


def parameter_layout(model: nn.Module) -> tuple:
    """Which tensors the model's parameters and buffers are, and where their values live."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return tuple((id(t), t.data_ptr(), t.dtype) for t in tensors)


def decoding_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree, in eval mode, over the same parameters and buffers,
    with every module the native kernels run replaced by its native version."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, shared).eval()
    _swap_children(twin)
    return twin


def _swap_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        native = native_version(child)
        if native is not child:
            setattr(module, name, native)
        _swap_children(native)


def native_version(module: nn.Module) -> nn.Module:
    """The native module that takes ``module``'s place in a decoding twin, or ``module`` itself."""
    if type(module) is nn.Linear:
        return adopt(NativeLinear, module)
    if type(module) is MultiHeadAttention:
        return adopt(NativeSelfAttention, module)
    if runs_natively(module):
        return adopt(NativeBlock, module)
    return module


def _watched(model: nn.Module) -> bool:
    """Whether a forward (pre-)hook watches the model, or its attention is being captured."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return True
        if isinstance(module, Attention) and module.keep_weights:
            return True
    return False
