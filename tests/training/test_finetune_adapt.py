"""Fine-tuning with --freeze and with LoRA adapters: what trains, the adapters in every checkpoint,
exact resume, and loaded runs that merge the adapters (merged outputs equal unmerged ones)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from finetune_fixtures import base_run, keyword_texts, write_csv
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models import build_model
from lmlab.training import checkpoint as ckpt
from lmlab.training.config import RunConfig
from lmlab.training.finetune import FinetuneConfig, finetune
from lmlab.training.finetuned import classify_texts, load_finetuned
from lmlab.training.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRALinear, apply_saved_lora, load_adapters
from lmlab.training.run import load_run


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch.set_num_threads(1)
    return base_run(tmp_path_factory.mktemp("base"), "mlm")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    train = write_csv(directory / "train.csv", ["text", "label"], keyword_texts(48, seed=0))
    val = write_csv(directory / "val.csv", ["text", "label"], keyword_texts(16, seed=1))
    return train, val


def _config(encoder, data, out, **overrides) -> FinetuneConfig:
    settings = dict(model=str(encoder), task="classify", data=str(data[0]), val=str(data[1]), out=str(out),
                    lr=1e-2, batch_size=8, checkpoint_every=4, max_steps=8)
    return FinetuneConfig(**{**settings, **overrides})


def _weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:08d}" / ckpt.MODEL_FILE)


def _base_weights(encoder) -> dict[str, torch.Tensor]:
    return {f"backbone.{k}": v for k, v in load_run(encoder).model.backbone.state_dict().items()}


def test_freezing_the_encoder_trains_only_the_head(tmp_path, encoder, data):
    result = finetune(_config(encoder, data, tmp_path / "run", freeze="encoder"), progress=False)
    base, tuned = _base_weights(encoder), _weights(tmp_path / "run", 8)
    assert result.frozen == sum(t.numel() for t in base.values()) and result.summary()["frozen_parameters"] > 0
    assert all(torch.equal(tuned[name], tensor) for name, tensor in base.items())
    assert any(not torch.equal(tuned[name], _weights(tmp_path / "run", 4)[name]) for name in tuned if "classifier" in name)


def test_only_the_adapters_and_the_new_head_change(tmp_path, encoder, data):
    result = finetune(_config(encoder, data, tmp_path / "run", lora_rank=4, lora_targets="q,v,ffn"), progress=False)
    tuned, base = _weights(tmp_path / "run", 8), _base_weights(encoder)
    assert all(torch.equal(tuned[name], tensor) for name, tensor in base.items())
    changed = {name for name, tensor in tuned.items() if name in base or "classifier" in name or "lora_" in name}
    assert any("lora_B" in name for name in changed) and any("classifier" in name for name in changed)
    assert result.trainable == sum(t.numel() for name, t in tuned.items() if "lora_" in name or "classifier" in name)
    assert result.frozen == sum(t.numel() for t in base.values())


def test_adapters_are_saved_on_their_own_in_every_checkpoint_and_in_best(tmp_path, encoder, data):
    finetune(_config(encoder, data, tmp_path / "run", lora_rank=2), progress=False)
    best = ckpt.list_checkpoints(tmp_path / "run" / "best")
    for checkpoint in ckpt.list_checkpoints(tmp_path / "run") + best:
        ckpt.verify_checkpoint(checkpoint)  # the manifest lists the adapter files
        adapters, weights = load_file(checkpoint / ADAPTER_WEIGHTS), load_file(checkpoint / ckpt.MODEL_FILE)
        assert set(adapters) == {name for name in weights if "lora_" in name}
        assert all(torch.equal(adapters[name], weights[name]) for name in adapters)
        assert json.loads((checkpoint / ADAPTER_CONFIG).read_text())["rank"] == 2
    assert best


def test_a_resumed_lora_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, encoder, data):
    settings = dict(lora_rank=4, lora_dropout=0.1)
    finetune(_config(encoder, data, tmp_path / "whole", max_steps=12, **settings), progress=False)
    finetune(_config(encoder, data, tmp_path / "split", max_steps=7, **settings), progress=False)
    finetune(_config(encoder, data, tmp_path / "split", max_steps=12, resume=True), progress=False)
    whole, split = _weights(tmp_path / "whole", 12), _weights(tmp_path / "split", 12)
    assert set(whole) == set(split) and all(torch.equal(whole[name], split[name]) for name in whole)


def test_a_loaded_lora_run_is_merged_and_equals_the_unmerged_model(tmp_path, encoder, data):
    finetune(_config(encoder, data, tmp_path / "run", lora_rank=4, lora_targets="q,k,v,o,ffn"), progress=False)
    checkpoint = ckpt.list_checkpoints(tmp_path / "run")[-1]
    state = ckpt.read_state(checkpoint)
    unmerged = apply_saved_lora(build_model(RunConfig.from_dict(state["config"]).model), state["lora"])
    ckpt.load_weights(checkpoint, unmerged)
    from_adapter_file = apply_saved_lora(build_model(RunConfig.from_dict(state["config"]).model), state["lora"])
    from_adapter_file.load_state_dict(unmerged.state_dict())
    with torch.no_grad():
        for layer in from_adapter_file.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.zero_()
    load_adapters(from_adapter_file, checkpoint)
    merged = load_run(tmp_path / "run").model
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    ids = torch.randint(4, 40, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = unmerged.eval()(ids)
        torch.testing.assert_close(merged(ids), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(from_adapter_file.eval()(ids), expected, atol=0, rtol=0)
    tuned = load_finetuned(tmp_path / "run" / "best")
    assert classify_texts(tuned, ["the sun is red"])[0]["label"] in ("no", "yes")


def test_freeze_and_lora_settings_are_checked(tmp_path, encoder, data):
    for overrides, message in ((dict(lora_alpha=8.0), "need --lora-rank"),
                               (dict(lora_rank=2, freeze="embeddings"), "do not combine"),
                               (dict(lora_rank=2, lora_targets="q,x"), "unknown LoRA target")):
        with pytest.raises(LmlabError, match=message):
            finetune(_config(encoder, data, tmp_path / "run", **overrides), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_lora_target_that_names_no_module_is_one_line_exit_2(tmp_path, data, capsys):
    gru = base_run(tmp_path, "causal-lm", **{"model.arch": "gru"})
    capsys.readouterr()
    out = tmp_path / "run"
    code = main(["finetune", str(gru), "--task", "causal-lm", "--data", str(data[0]), "--out", str(out),
                 "--text-column", "text", "--lora-rank", "2", "--no-progress"])
    stderr = capsys.readouterr().err.strip()
    assert code == 2 and len(stderr.splitlines()) == 1 and "name no module" in stderr, stderr
    assert not out.exists()
