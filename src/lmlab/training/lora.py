"""LoRA (Hu et al., 2021): low-rank adapters on a model's projections, saved on their own, merged
back for generation and export.

Written here rather than taken from ``peft``: lmlab's layers are plain ``nn.Linear``, but its
attention fuses q, k and v into one ``qkv`` projection (and cross-attention k and v into
``kv_proj``), so adapting "q" means adapting some output rows of one layer. peft adapts whole
modules by name; here one small class does it with a row mask on B, keeps the base parameters'
state-dict names (``…attn.qkv.weight`` stays ``…attn.qkv.weight``; the adapter adds
``…attn.qkv.lora_A`` and ``…lora_B``), and merging is one matrix product under lmlab's control.

``LoRALinear`` computes ``x Wᵀ + b + (α/r) · dropout(x) Aᵀ (m ⊙ B)ᵀ`` with W, b frozen, A (r, in)
Kaiming-uniform, B (out, r) zero (so a fresh adapter changes nothing) and m the targeted rows.

A block with unmerged adapters decodes through its own modules (the fused native block runs only
blocks made of plain ``nn.Linear`` layers, since it reads their weights directly);
:func:`merge_lora`'s result decodes at full speed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmlab.errors import LmlabError, read_json_file
from lmlab.layers.attention import CrossAttention, MultiHeadAttention
from lmlab.layers.feedforward import FeedForward, GatedFeedForward

ROLES = ("q", "k", "v", "o", "ffn")
DEFAULT_TARGETS = ("q", "k", "v", "o")
ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapters.json"
LORA_STATE = "lora"  # the key of a run's state.json holding its adapters' settings


@dataclass(frozen=True)
class LoRASettings:
    """What :func:`apply_lora` was given; saved next to the adapters."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        """The settings as JSON (what ``adapters.json`` and a run's state hold)."""
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict) -> "LoRASettings":
        return cls(int(data["rank"]), float(data["alpha"]), float(data["dropout"]), tuple(data["targets"]))


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` (frozen ``weight``, ``bias``) plus a low-rank update on the rows it targets.

    ``rows`` (a bool mask over the output features) limits the update to those rows; None means
    all of them.
    """

    def __init__(self, base: nn.Linear, settings: LoRASettings, rows: torch.Tensor | None = None):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight  # the base's own parameters (the meta ones above are dropped)
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.settings = settings
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(settings.rank, base.in_features, **like))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, settings.rank, **like))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(settings.dropout)
        row_mask = None if rows is None else rows.to(**like)[:, None]  # (out, 1)
        self.register_buffer("lora_rows", row_mask, persistent=False)

    def masked_B(self) -> torch.Tensor:
        """B with the untargeted rows zeroed: (out, r)."""
        return self.lora_B if self.lora_rows is None else self.lora_B * self.lora_rows

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to ``weight``: (α/r) · (m ⊙ B) A, (out, in)."""
        return self.settings.scale * (self.masked_B() @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) → (..., out)."""
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.masked_B())  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.settings.scale * update

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes (without dropout)."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain


def parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """``"q,v"`` or ``["q", "v"]`` → ``("q", "v")``; an unknown role is a one-line error."""
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    unknown = [name for name in names if name not in ROLES]
    if unknown or not names:
        raise LmlabError(f"unknown LoRA target(s) {', '.join(map(repr, unknown)) or 'none given'}; roles: {', '.join(ROLES)}")
    return tuple(dict.fromkeys(names))


def projection_roles(module: nn.Module) -> dict[str, dict[str, slice]]:
    """The projections of an attention or feed-forward layer: attribute → role → output rows."""
    every = slice(None)
    if isinstance(module, MultiHeadAttention):
        q, kv = module.n_head * module.head_dim, module.n_kv_heads * module.head_dim
        return {"qkv": {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}, "out_proj": {"o": every}}
    if isinstance(module, CrossAttention):
        kv = module.n_kv_heads * module.head_dim
        return {"q_proj": {"q": every}, "kv_proj": {"k": slice(0, kv), "v": slice(kv, 2 * kv)}, "out_proj": {"o": every}}
    if isinstance(module, (FeedForward, GatedFeedForward)):
        return {name: {"ffn": every} for name, _ in module.named_children() if name in ("gate", "up", "down")}
    return {}


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: str | Sequence[str] = DEFAULT_TARGETS,
) -> nn.Module:
    """Replace the projections ``targets`` names (roles q, k, v, o, ffn) by :class:`LoRALinear`,
    in place, and freeze every other parameter: afterwards only the adapters train (unfreeze a
    new head yourself, e.g. ``model.classifier.requires_grad_(True)``). Returns ``model``."""
    settings = _checked_settings(rank, alpha, dropout, parse_targets(targets))
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise LmlabError("this model already has LoRA adapters; merge them (merge_lora) before adding new ones")
    plan = [
        (layer, name, roles, [role for role in roles if role in settings.targets])
        for layer in model.modules()
        for name, roles in projection_roles(layer).items()
    ]
    found = {role for *_, wanted in plan for role in wanted}
    missing = [role for role in settings.targets if role not in found]
    if missing:  # checked before anything changes
        raise LmlabError(
            f"LoRA target(s) {', '.join(missing)} name no module of this {type(model).__name__}; roles: {', '.join(ROLES)}"
        )
    model.requires_grad_(False)
    for layer, name, roles, wanted in plan:
        if wanted:
            setattr(layer, name, _adapted(getattr(layer, name), settings, roles, wanted))
    return model


def _checked_settings(rank: int, alpha: float, dropout: float, targets: tuple[str, ...]) -> LoRASettings:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LmlabError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise LmlabError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise LmlabError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    return LoRASettings(rank, float(alpha), float(dropout), targets)


def _adapted(linear: nn.Linear, settings: LoRASettings, roles: dict[str, slice], wanted: list[str]) -> LoRALinear:
    """``linear`` with an adapter on the output rows of the ``wanted`` roles (no mask when that
    is every row)."""
    rows = torch.zeros(linear.out_features, dtype=torch.bool)
    for role in wanted:
        rows[roles[role]] = True
    adapted = LoRALinear(linear, settings, None if bool(rows.all()) else rows)
    return adapted.train(linear.training)  # the new dropout follows the model's mode


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Module path → adapted layer, in model order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: ``"<module path>.lora_A"`` and ``".lora_B"``."""
    tensors = {}
    for name, layer in lora_layers(model).items():
        tensors[f"{name}.lora_A"] = layer.lora_A.detach()
        tensors[f"{name}.lora_B"] = layer.lora_B.detach()
    return tensors


def lora_settings(model: nn.Module) -> LoRASettings:
    """The settings the model's adapters were made with; an error if it has none."""
    layers = lora_layers(model)
    if not layers:
        raise LmlabError("this model has no LoRA adapters; add them with apply_lora (--lora-rank)")
    return next(iter(layers.values())).settings


def save_adapters(model: nn.Module, directory: str | Path) -> Path:
    """Write ``adapters.safetensors`` (the adapter tensors only) and ``adapters.json`` (rank,
    alpha, dropout, targets) into ``directory``, each replacing its file atomically. Returns the
    directory."""
    directory = Path(directory)
    settings = lora_settings(model)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous().cpu() for name, t in lora_state_dict(model).items()}
    _write_atomically(directory / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    config = settings.to_dict()
    _write_atomically(directory / ADAPTER_CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_adapters(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load adapters saved by :func:`save_adapters` into ``model`` (adding them with the saved
    settings when the model has none). Returns ``model``."""
    directory = Path(directory)
    fix = "point at a directory written by save_adapters"
    config = read_json_file(directory / ADAPTER_CONFIG, fix, dict)
    try:
        saved = LoRASettings.from_dict(config)
    except (KeyError, TypeError, ValueError):
        raise LmlabError(f"{directory / ADAPTER_CONFIG} lacks rank, alpha, dropout or targets; {fix}") from None
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise LmlabError(f"{directory / ADAPTER_WEIGHTS} does not exist; {fix}")
    if not lora_layers(model):
        apply_lora(model, saved.rank, saved.alpha, saved.dropout, saved.targets)
    elif lora_settings(model) != saved:
        raise LmlabError(f"the model's adapters ({lora_settings(model)}) differ from the saved ones ({saved})")
    _copy_adapter_tensors(model, load_file(str(directory / ADAPTER_WEIGHTS)), directory)
    return model


def _copy_adapter_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> None:
    expected = lora_state_dict(model)
    if set(tensors) != set(expected):
        odd = sorted(set(tensors) ^ set(expected))
        raise LmlabError(f"the adapters in {directory} do not fit this model (e.g. {odd[0]}); load them into the model they were trained on")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise LmlabError(f"adapter {name} in {directory} is {tuple(tensor.shape)}, the model's is {tuple(expected[name].shape)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            expected[name].copy_(tensor)


def apply_saved_lora(model: nn.Module, settings: dict) -> nn.Module:
    """:func:`apply_lora` with settings as :meth:`LoRASettings.to_dict` wrote them (a run's state)."""
    saved = LoRASettings.from_dict(settings)
    return apply_lora(model, saved.rank, saved.alpha, saved.dropout, saved.targets)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put a plain ``nn.Linear`` back in its place, in
    place (for generation and export; outputs unchanged; the merged layers stay frozen, like the
    rest of the model after :func:`apply_lora`). Returns ``model``."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        merged = layer.merged()
        merged.requires_grad_(False)
        setattr(parent, child, merged)
    return model
