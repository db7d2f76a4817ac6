"""Checkpoints: exact round trip, pruning, corruption detection with fallback, partial-write cleanup."""

import json

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, build_model
from lmlab.training import checkpoint as ckpt
from lmlab.training.config import TrainConfig
from lmlab.training.optim import build_optimizer


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=20, n_layer=1, n_head=2, d_model=16, context_length=8, dropout=0.0)
    return build_model(config)


def trained(seed: int = 0, steps: int = 3):
    """A tiny model and its AdamW after a few steps (so the optimizer has moments and a step count)."""
    model = tiny_model(seed)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-2))
    ids = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        model(ids).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def shared_storage(model) -> set[frozenset[str]]:
    """Groups of state-dict names that are one tensor (a tied weight)."""
    by_pointer = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_pointer.setdefault(tensor.data_ptr(), set()).add(name)
    return {frozenset(names) for names in by_pointer.values() if len(names) > 1}


def save(run_dir, step, model, optimizer=None, keep=3):
    return ckpt.save_checkpoint(run_dir, step, model, optimizer, {"note": f"step {step}"}, keep=keep)


def test_round_trip_restores_weights_and_optimizer_exactly(tmp_path):
    model, optimizer = trained()
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    path = save(tmp_path, 7, model, optimizer)
    assert path == tmp_path / ckpt.CHECKPOINTS / "step-00000007"
    assert {p.name for p in path.iterdir()} == {ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.STATE, ckpt.MANIFEST}
    ckpt.verify_checkpoint(path)

    fresh = tiny_model(seed=99)
    fresh_optimizer = build_optimizer(fresh, TrainConfig(lr=1.0))
    ckpt.load_weights(path, fresh)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    assert shared_storage(fresh) == shared_storage(model) != set()  # tying survives loading

    snapshot = ckpt.load_snapshot(path)
    assert snapshot.step == 7
    assert snapshot.state["note"] == "step 7" and snapshot.state["step"] == 7
    assert torch.equal(snapshot.rng_state, rng_before)
    fresh_optimizer.load_state_dict(snapshot.optimizer_state)
    original, restored = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert original["state"].keys() == restored["state"].keys()
    for index, per_param in original["state"].items():
        assert per_param.keys() == restored["state"][index].keys()
        for key, value in per_param.items():
            other = restored["state"][index][key]
            assert other.dtype == value.dtype and torch.equal(other, value), (index, key)
    for group, other in zip(original["param_groups"], restored["param_groups"]):
        assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()} == other


def test_restored_optimizer_continues_identically(tmp_path):
    model, optimizer = trained()
    path = save(tmp_path, 3, model, optimizer)
    fresh = tiny_model(seed=5)
    fresh_optimizer = build_optimizer(fresh, TrainConfig(lr=1e-2))
    ckpt.load_weights(path, fresh)
    fresh_optimizer.load_state_dict(ckpt.load_snapshot(path).optimizer_state)
    ids = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(1))
    for m, opt in ((model, optimizer), (fresh, fresh_optimizer)):
        m(ids).square().mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_without_optimizer(tmp_path):
    model = tiny_model()
    path = save(tmp_path, 1, model)
    ckpt.verify_checkpoint(path)
    snapshot = ckpt.load_snapshot(path)
    assert snapshot.optimizer_state is None and snapshot.rng_state is None


def test_weights_that_do_not_fit_are_an_error(tmp_path):
    path = save(tmp_path, 1, tiny_model())
    other = build_model(ModelConfig(vocab_size=21, n_layer=1, n_head=2, d_model=16, context_length=8))
    with pytest.raises(LmlabError, match="do not fit"):
        ckpt.load_weights(path, other)


def test_keep_last_k(tmp_path):
    model = tiny_model()
    for step in range(1, 7):
        save(tmp_path, step * 10, model, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000050", "step-00000060"]
    save(tmp_path, 70, model, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000070"]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    model, optimizer = trained()
    save(tmp_path, 5, tiny_model(seed=1))
    path = save(tmp_path, 5, model, optimizer)
    ckpt.verify_checkpoint(path)
    assert len(ckpt.list_checkpoints(tmp_path)) == 1
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    fresh = tiny_model(seed=2)
    ckpt.load_weights(path, fresh)
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)


def truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def flip_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_byte], ids=["truncated", "flipped-byte"])
@pytest.mark.parametrize("target", [ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.STATE])
def test_damage_is_detected_and_the_previous_checkpoint_is_used(tmp_path, damage, target):
    model, optimizer = trained()
    older = save(tmp_path, 10, model, optimizer)
    newer = save(tmp_path, 20, model, optimizer)
    damage(newer / target)
    with pytest.raises(LmlabError, match="corrupt") as info:
        ckpt.verify_checkpoint(newer)
    assert "\n" not in str(info.value) and target in str(info.value)
    ckpt.verify_checkpoint(older)
    warnings = []
    assert ckpt.latest_good_checkpoint(tmp_path, warnings.append) == older
    assert len(warnings) == 1
    assert "step-00000020" in warnings[0] and "warning" in warnings[0]


def test_missing_file_and_missing_manifest_are_detected(tmp_path):
    model = tiny_model()
    a = save(tmp_path, 1, model)
    b = save(tmp_path, 2, model)
    (a / ckpt.MODEL_FILE).unlink()
    (b / ckpt.MANIFEST).unlink()
    with pytest.raises(LmlabError, match="missing"):
        ckpt.verify_checkpoint(a)
    with pytest.raises(LmlabError, match="manifest"):
        ckpt.verify_checkpoint(b)
    warnings = []
    assert ckpt.latest_good_checkpoint(tmp_path, warnings.append) is None
    assert warnings == []  # nothing to fall back to: the caller's one error line says why
    why = ckpt.why_no_good_checkpoint(tmp_path)
    assert "all 2" in why and "manifest" in why and "\n" not in why
    assert ckpt.why_no_good_checkpoint(tmp_path / "elsewhere") == "it has no checkpoint"


def test_manifest_lists_every_file(tmp_path):
    model, optimizer = trained()
    path = save(tmp_path, 4, model, optimizer)
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    assert manifest["step"] == 4
    assert set(manifest["files"]) == {ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.STATE}


def test_latest_good_checkpoint_of_an_empty_or_missing_run(tmp_path):
    assert ckpt.latest_good_checkpoint(tmp_path / "nothing", print) is None
    assert ckpt.list_checkpoints(tmp_path) == []


def test_remove_partial_checkpoints(tmp_path):
    model = tiny_model()
    good = save(tmp_path, 3, model)
    root = tmp_path / ckpt.CHECKPOINTS
    leftovers = [root / ".step-00000004.tmp-12345", root / ".step-00000005.tmp-999"]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / ckpt.MODEL_FILE).write_bytes(b"half written")
    assert ckpt.list_checkpoints(tmp_path) == [good]  # temporary directories are never checkpoints
    ckpt.remove_partial_checkpoints(tmp_path)
    assert not any(p.exists() for p in leftovers)
    assert ckpt.list_checkpoints(tmp_path) == [good]
    ckpt.verify_checkpoint(good)
    ckpt.remove_partial_checkpoints(tmp_path / "no-run-here")  # nothing to do, no error
