"""Checkpoints: exact round trip, pruning, corruption detection with fallback, partial-write cleanup."""

import errno
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError

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


STATE = {"config": {}, "tokenizer": {"kind": "char", "data": {}}}  # what every run's state holds


def save(run_dir, step, model, optimizer=None, keep=3):
    return ckpt.save_checkpoint(run_dir, step, model, optimizer, {**STATE, "note": f"step {step}"}, keep=keep)


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


# ---------------------------------------------------------------- finite weights only
def test_non_finite_tensors_finds_inf_and_nan_but_not_large_finite_values():
    tensors = {"ok": torch.ones(4), "inf": torch.tensor([1.0, float("inf")]), "nan": torch.tensor([float("nan")]),
               "huge": torch.full((16,), 1e30), "half": torch.tensor([float("-inf")], dtype=torch.bfloat16),
               "ints": torch.arange(3), "empty": torch.zeros(0)}
    assert sorted(ckpt.non_finite_tensors(tensors)) == ["half", "inf", "nan"]  # the norm of "huge" overflows


@pytest.mark.parametrize("poison", ["weights", "optimizer"])
def test_non_finite_state_is_never_written(tmp_path, poison):
    model, optimizer = trained()
    good = save(tmp_path, 1, model, optimizer)
    with torch.no_grad():
        if poison == "weights":
            next(model.parameters()).fill_(float("nan"))
        else:
            next(iter(optimizer.state.values()))["exp_avg"].fill_(float("inf"))
    with pytest.raises(ckpt.NonFiniteState, match="inf or NaN"):
        save(tmp_path, 2, model, optimizer)
    assert ckpt.list_checkpoints(tmp_path) == [good]
    assert [p.name for p in (tmp_path / ckpt.CHECKPOINTS).iterdir()] == [good.name]


def test_a_checkpoint_with_non_finite_weights_is_not_good(tmp_path, monkeypatch):
    model, optimizer = trained()
    older = save(tmp_path, 1, model, optimizer)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    monkeypatch.setattr(ckpt, "_refuse_non_finite", lambda tensors, what: None)  # as an older lmlab wrote it
    newer = save(tmp_path, 2, model, optimizer)
    with pytest.raises(LmlabError, match="inf or NaN") as info:
        ckpt.verify_checkpoint(newer)
    assert "\n" not in str(info.value) and ckpt.MODEL_FILE in str(info.value)
    warnings = []
    assert ckpt.latest_good_checkpoint(tmp_path, warnings.append) == older
    assert len(warnings) == 1 and "inf or NaN" in warnings[0]


# ---------------------------------------------------------------- malformed but parseable metadata
def refresh_manifest(path):
    """Recompute the manifest's sizes and checksums of the files it lists (so only the schema is off)."""
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    manifest["files"] = {name: {"bytes": (path / name).stat().st_size, "sha256": ckpt._sha256(path / name)}
                         for name in manifest["files"]}
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))


def edit_manifest(change):
    def apply(path):
        manifest = json.loads((path / ckpt.MANIFEST).read_text())
        (path / ckpt.MANIFEST).write_text(json.dumps(change(manifest)))
    return apply


def edit_state(change):
    def apply(path):
        state = json.loads((path / ckpt.STATE).read_text())
        (path / ckpt.STATE).write_text(json.dumps(change(state)))
        refresh_manifest(path)
    return apply


def without(record, key):
    return {k: v for k, v in record.items() if k != key}


def write_state_text(text):
    def apply(path):
        (path / ckpt.STATE).write_text(text)
        refresh_manifest(path)
    return apply


MALFORMED = {
    "manifest not JSON": lambda p: (p / ckpt.MANIFEST).write_text("{'files': "),
    "manifest a list": edit_manifest(lambda m: [m]),
    "manifest without step": edit_manifest(lambda m: without(m, "step")),
    "manifest without files": edit_manifest(lambda m: without(m, "files")),
    "files a list": edit_manifest(lambda m: {**m, "files": list(m["files"])}),
    "files empty": edit_manifest(lambda m: {**m, "files": {}}),
    "entry without sha256": edit_manifest(
        lambda m: {**m, "files": {**m["files"], ckpt.MODEL_FILE: without(m["files"][ckpt.MODEL_FILE], "sha256")}}),
    "entry without bytes": edit_manifest(
        lambda m: {**m, "files": {**m["files"], ckpt.STATE: without(m["files"][ckpt.STATE], "bytes")}}),
    "entry bytes a string": edit_manifest(
        lambda m: {**m, "files": {**m["files"], ckpt.STATE: {**m["files"][ckpt.STATE], "bytes": "12"}}}),
    "entry a list": edit_manifest(lambda m: {**m, "files": {**m["files"], ckpt.STATE: [1, "x"]}}),
    "optimizer unlisted": edit_manifest(lambda m: {**m, "files": without(m["files"], ckpt.OPTIMIZER_FILE)}),
    "model unlisted and missing": lambda p: ((p / ckpt.MODEL_FILE).unlink(), edit_manifest(
        lambda m: {**m, "files": without(m["files"], ckpt.MODEL_FILE)})(p)),
    "entry outside the checkpoint": edit_manifest(
        lambda m: {**m, "files": {**m["files"], "../x": m["files"][ckpt.STATE]}}),
    "state not JSON": write_state_text("step: 2"),
    "state a list": write_state_text("[2]"),
    "state without step": edit_state(lambda s: without(s, "step")),
    "state step a string": edit_state(lambda s: {**s, "step": "2"}),
    "state step not the manifest's": edit_state(lambda s: {**s, "step": 3}),
    "state without config": edit_state(lambda s: without(s, "config")),
    "state without tokenizer": edit_state(lambda s: without(s, "tokenizer")),
    "tokenizer without data": edit_state(lambda s: {**s, "tokenizer": {"kind": "char"}}),
    "state without optimizer groups": edit_state(lambda s: without(s, "optimizer_param_groups")),
    "optimizer groups not objects": edit_state(lambda s: {**s, "optimizer_param_groups": [1, 2]}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_metadata_is_not_good_and_the_previous_checkpoint_is_used(tmp_path, case):
    model, optimizer = trained()
    older = save(tmp_path, 1, model, optimizer)
    newer = save(tmp_path, 2, model, optimizer)
    MALFORMED[case](newer)
    with pytest.raises(LmlabError) as info:
        ckpt.verify_checkpoint(newer)
    assert "\n" not in str(info.value) and str(newer) in str(info.value)
    warnings = []
    assert ckpt.latest_good_checkpoint(tmp_path, warnings.append) == older
    assert len(warnings) == 1 and "step-00000002" in warnings[0]
    assert ckpt.load_snapshot(older).step == 1


# ---------------------------------------------------------------- a full disk
DISK_FULL_ERRORS = {
    "safetensors": lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    "oserror": lambda: OSError(errno.ENOSPC, "No space left on device"),
}


@pytest.mark.parametrize("kind", list(DISK_FULL_ERRORS))
def test_a_full_disk_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch, kind):
    model, optimizer = trained()
    older = save(tmp_path, 1, model, optimizer)
    real_save_file = ckpt.save_file

    def save_file_until_the_disk_fills(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        if filename.endswith(ckpt.OPTIMIZER_FILE):  # the model file is written, the optimizer's half
            raise DISK_FULL_ERRORS[kind]()

    monkeypatch.setattr(ckpt, "save_file", save_file_until_the_disk_fills)
    with pytest.raises(LmlabError) as info:
        save(tmp_path, 2, model, optimizer)
    message = str(info.value)
    assert "\n" not in message and "no room" in message and "MB" in message and "free" in message
    assert [p.name for p in (tmp_path / ckpt.CHECKPOINTS).iterdir()] == [older.name]  # no partial write left
    ckpt.verify_checkpoint(older)
    ckpt.load_weights(older, tiny_model(seed=5))
    assert ckpt.load_snapshot(older).step == 1


def fake_disk(monkeypatch, run_dir, capacity):
    """A disk of ``capacity`` bytes holding only ``run_dir``, as ``shutil.disk_usage`` reports it."""
    def usage(path):
        used = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file())
        return SimpleNamespace(total=capacity, used=used, free=capacity - used)
    monkeypatch.setattr(shutil, "disk_usage", usage)


def checkpoint_bytes(path):
    return sum(f.stat().st_size for f in path.iterdir())


def test_old_checkpoints_are_pruned_when_that_makes_room(tmp_path, monkeypatch):
    model, optimizer = trained()
    first = save(tmp_path, 1, model, optimizer, keep=3)
    size = checkpoint_bytes(first)
    save(tmp_path, 2, model, optimizer, keep=3)
    fake_disk(monkeypatch, tmp_path, capacity=2 * size + size // 2 + ckpt.METADATA_BYTES)
    save(tmp_path, 3, model, optimizer, keep=3)  # fits once step 1 is gone
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]


def test_the_newest_good_checkpoint_is_never_pruned_for_room(tmp_path, monkeypatch):
    """Only deleting the newest good checkpoint too would make room: nothing is deleted, one line says why."""
    model, optimizer = trained()
    older = save(tmp_path, 1, model, optimizer)
    good = save(tmp_path, 2, model, optimizer)
    size = checkpoint_bytes(good)
    fake_disk(monkeypatch, tmp_path, capacity=size + size // 2 + ckpt.METADATA_BYTES)
    with pytest.raises(LmlabError, match="no room") as info:
        save(tmp_path, 3, model, optimizer)
    assert "\n" not in str(info.value)
    assert ckpt.list_checkpoints(tmp_path) == [older, good]
    assert sorted(p.name for p in (tmp_path / ckpt.CHECKPOINTS).iterdir()) == [older.name, good.name]
    ckpt.verify_checkpoint(good)


# ---------------------------------------------------------------- deleting only lmlab's own files
def test_only_lmlab_named_leftovers_and_checkpoints_are_deleted(tmp_path):
    model = tiny_model()
    root = tmp_path / ckpt.CHECKPOINTS
    foreign = [root / ".step-backup", root / "step-best", root / ".step-00000004.tmp-12x"]
    for path in foreign:
        path.mkdir(parents=True)
        (path / "precious.bin").write_bytes(b"user data")
    for step in range(1, 5):
        save(tmp_path, step, model, keep=1)
    ckpt.remove_partial_checkpoints(tmp_path)
    assert all((path / "precious.bin").is_file() for path in foreign)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000004"]
