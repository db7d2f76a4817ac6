"""LoRA: merged equals unmerged, only adapters train, a q target adapts only the q rows of the
fused projection, adapters save and load on their own, bad targets are one-line errors."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, generate
from lmlab.models import ModelConfig, build_model
from lmlab.training.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRALinear,
    apply_lora,
    load_adapters,
    lora_state_dict,
    merge_lora,
    save_adapters,
)

V = 24


def tiny(backbone: str, **overrides) -> nn.Module:
    fields = dict(backbone=backbone, vocab_size=V, n_layer=2, n_head=4, n_kv_heads=2, d_model=32,
                  context_length=16, dropout=0.0, ffn="swiglu")
    fields.update(overrides)
    torch.manual_seed(0)
    return build_model(ModelConfig(**fields)).eval()


def ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module) -> torch.Tensor:
    if model.structure == "encoder-decoder":
        return model(ids(), ids(seed=1))
    return model(ids())


def randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    """A fresh adapter is a no-op (B = 0); give B values so the tests see the adapter's effect."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("backbone", ["decoder", "encoder", "encoder-decoder"])
@pytest.mark.parametrize("targets", ["q,k,v,o", "q", "v,ffn", "q,k,v,o,ffn"])
def test_merged_equals_unmerged(backbone, targets):
    model = apply_lora(tiny(backbone), rank=4, alpha=8, targets=targets)
    randomise_adapters(model)
    with torch.no_grad():
        unmerged = run(model)
        merged_model = merge_lora(model)
        merged = run(merged_model)
    assert not any(isinstance(m, LoRALinear) for m in merged_model.modules())
    assert all(type(m) is nn.Linear for name, m in merged_model.named_modules() if name.endswith(("qkv", "out_proj", "up")))
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)


def test_a_fresh_adapter_changes_nothing():
    plain = tiny("decoder")
    with torch.no_grad():
        before = run(plain)
        after = run(apply_lora(plain, rank=2, alpha=4, targets="q,k,v,o,ffn"))
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_generating_with_unmerged_adapters_equals_the_merged_model():
    """Decoding must not skip the adapters (the native kernels read ``weight`` directly)."""
    model = apply_lora(tiny("decoder", ffn="gelu"), rank=4, alpha=8, targets="q,k,v,o,ffn")
    randomise_adapters(model, seed=2)
    config = GenerationConfig(max_new_tokens=10)
    merged = merge_lora(copy.deepcopy(model))
    assert generate(model, [1, 2, 3], config) == generate(merged, [1, 2, 3], config)


def test_only_adapters_require_grad_and_names_are_kept():
    model = tiny("encoder-decoder")
    base_names = set(model.state_dict())
    apply_lora(model, rank=4, alpha=8, targets="q,k,v,o,ffn")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith((".lora_A", ".lora_B")) for name in trainable)
    assert set(model.state_dict()) - base_names == set(lora_state_dict(model))
    assert "decoder.blocks.0.cross_attn.kv_proj.lora_A" in trainable
    assert model.encoder.blocks[0].attn.qkv.lora_A.shape == (4, 32)


def test_q_target_adapts_only_the_query_rows_of_the_fused_projection():
    model = apply_lora(tiny("decoder"), rank=4, alpha=8, targets="q")
    randomise_adapters(model)
    qkv = model.backbone.blocks[0].attn.qkv
    q_rows = 4 * 8  # n_head · head_dim; then 2 kv heads for k and v
    delta = qkv.delta_weight()
    assert delta[:q_rows].abs().sum() > 0
    assert torch.equal(delta[q_rows:], torch.zeros_like(delta[q_rows:]))
    assert not isinstance(model.backbone.blocks[0].attn.out_proj, LoRALinear)
    cross = apply_lora(tiny("encoder-decoder"), rank=2, alpha=2, targets="v").decoder.blocks[0].cross_attn
    randomise_adapters(cross)
    kv_delta = cross.kv_proj.delta_weight()  # (2·kv, C): keys first, then values
    assert torch.equal(kv_delta[:16], torch.zeros_like(kv_delta[:16])) and kv_delta[16:].abs().sum() > 0


def test_training_changes_only_the_adapters():
    model = apply_lora(tiny("decoder").train(), rank=4, alpha=8, dropout=0.1, targets="q,v,ffn")
    before = {name: t.clone() for name, t in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        batch = ids(seed=step)
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, V), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= set(lora_state_dict(model))
    assert any(name.endswith("lora_B") for name in changed)


def test_save_load_round_trip(tmp_path):
    model = apply_lora(tiny("encoder"), rank=4, alpha=8, dropout=0.05, targets="k,o")
    randomise_adapters(model)
    save_adapters(model, tmp_path / "adapters")
    saved = load_file(str(tmp_path / "adapters" / ADAPTER_WEIGHTS))
    assert set(saved) == set(lora_state_dict(model))
    config = json.loads((tmp_path / "adapters" / ADAPTER_CONFIG).read_text())
    assert config == {"rank": 4, "alpha": 8.0, "dropout": 0.05, "targets": ["k", "o"]}
    fresh = load_adapters(tiny("encoder"), tmp_path / "adapters")  # same base weights (seeded)
    with torch.no_grad():
        torch.testing.assert_close(run(fresh), run(model), atol=0, rtol=0)
    assert sorted(p for p in saved) == sorted(lora_state_dict(fresh))


def test_loading_into_a_model_they_do_not_fit_is_one_line(tmp_path):
    save_adapters(apply_lora(tiny("encoder"), rank=4, alpha=8), tmp_path)
    with pytest.raises(LmlabError, match="do not fit this model") as info:
        load_adapters(tiny("encoder", n_layer=1), tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(LmlabError, match="differ from the saved ones"):
        load_adapters(apply_lora(tiny("encoder"), rank=2, alpha=8), tmp_path)
    with pytest.raises(LmlabError, match="adapters.json does not exist"):
        load_adapters(tiny("encoder"), tmp_path / "nowhere")


@pytest.mark.parametrize(
    "model, targets, message",
    [
        (lambda: tiny("decoder"), "q,x", r"unknown LoRA target\(s\) 'x'; roles: q, k, v, o, ffn"),
        (lambda: tiny("decoder"), "", "none given"),
        (lambda: tiny("decoder", arch="gru", rnn_hidden=16, n_layer=1), "q", "name no module of this GRULM; roles: q, k, v, o, ffn"),
    ],
)
def test_bad_targets_are_one_line_errors(model, targets, message):
    with pytest.raises(LmlabError, match=message) as info:
        apply_lora(model(), rank=4, alpha=8, targets=targets)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("settings, message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(alpha=0.0), "alpha must be a positive number"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(LmlabError, match=message):
        apply_lora(tiny("decoder"), **{"rank": 4, "alpha": 8.0, **settings})


def test_adapting_twice_is_refused():
    model = apply_lora(tiny("decoder"), rank=2, alpha=2)
    with pytest.raises(LmlabError, match="already has LoRA adapters"):
        apply_lora(model, rank=2, alpha=2)
