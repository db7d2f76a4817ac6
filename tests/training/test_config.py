"""Run configuration: presets, ``--set`` overrides, YAML files and their one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmlab
from lmlab.errors import LmlabError
from lmlab.training.config import (
    RunConfig,
    apply_overrides,
    load_config_file,
    load_preset,
    preset_names,
)
from lmlab.training.objective_names import OBJECTIVE_NAMES


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_presets_are_listed_and_load():
    names = preset_names()
    assert {"nanogpt-cpu", "shakespeare-char"} <= set(names)
    for name in names:
        config = load_preset(name)
        assert isinstance(config, RunConfig)
        config.model.vocab_size = 65
        config.model.validate()


def test_nanogpt_cpu_preset_is_exactly_nanogpts_cpu_run():
    config = load_preset("nanogpt-cpu")
    m, t, d = config.model, config.train, config.data
    assert (m.n_layer, m.n_head, m.d_model, m.context_length) == (4, 4, 128, 64)
    assert m.dropout == 0.0
    assert m.bias is False
    assert t.batch_size == 12
    assert t.lr == 1e-3 and t.min_lr == 1e-4
    assert t.warmup_steps == 100 and t.max_steps == 2000
    assert (t.beta1, t.beta2) == (0.9, 0.99)
    assert t.weight_decay == 0.1 and t.grad_clip == 1.0
    assert t.grad_accum == 1
    assert t.max_time is None
    assert d.corpus == "tinyshakespeare"
    for value in (t.lr, t.min_lr, t.weight_decay, t.grad_clip, t.beta1, t.beta2, m.dropout):
        assert type(value) is float


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(LmlabError) as info:
        load_preset("gpt-17")
    message = one_line_error(info)
    assert "gpt-17" in message and "nanogpt-cpu" in message and "shakespeare-char" in message


def test_overrides_set_nested_fields_with_types():
    config = apply_overrides(
        RunConfig(),
        ["model.n_layer=6", "train.lr=3e-4", "train.min_lr=1.5E-5", "model.bias=false",
         "data.corpus=my_text.txt", "train.weight_decay=0", "model.norm=rmsnorm"],
    )
    assert config.model.n_layer == 6 and type(config.model.n_layer) is int
    assert config.train.lr == 3e-4 and type(config.train.lr) is float  # YAML 1.1 reads 3e-4 as a string
    assert config.train.min_lr == 1.5e-5
    assert config.model.bias is False
    assert config.data.corpus == "my_text.txt"
    assert config.train.weight_decay == 0.0 and type(config.train.weight_decay) is float
    assert config.model.norm == "rmsnorm"


def test_later_overrides_win():
    config = apply_overrides(RunConfig(), ["model.n_layer=2", "model.n_layer=3"])
    assert config.model.n_layer == 3


def test_null_clears_optional_fields():
    config = apply_overrides(RunConfig(), ["train.max_time=60", "model.n_kv_heads=2"])
    assert config.train.max_time == 60.0
    config = apply_overrides(config, ["train.max_time=null", "model.n_kv_heads=null", "model.d_ff=~"])
    assert config.train.max_time is None
    assert config.model.n_kv_heads is None and config.model.d_ff is None


def test_null_for_a_required_field_is_an_error():
    with pytest.raises(LmlabError) as info:
        apply_overrides(RunConfig(), ["model.n_layer=null"])
    assert "model.n_layer" in one_line_error(info)


@pytest.mark.parametrize(
    "override,unknown,expected",
    [
        ("model.n_layers=6", "model.n_layers", ["model.n_layer", "model.n_head", "model.d_model"]),
        ("train.learning_rate=1", "train.learning_rate", ["train.lr", "train.max_steps"]),
        ("optim.lr=1", "optim", ["model", "train", "data"]),
    ],
)
def test_unknown_key_lists_the_valid_keys(override, unknown, expected):
    with pytest.raises(LmlabError) as info:
        apply_overrides(RunConfig(), [override])
    message = one_line_error(info)
    assert unknown in message
    for key in expected:
        assert key in message


@pytest.mark.parametrize(
    "override,words",
    [
        ("model.n_layer=abc", ["model.n_layer", "integer", "abc"]),
        ("model.n_layer=2.5", ["model.n_layer", "integer", "2.5"]),
        ("model.n_layer=true", ["model.n_layer", "integer"]),
        ("train.lr=fast", ["train.lr", "number", "fast"]),
        ("model.bias=maybe", ["model.bias", "true or false"]),
        ("model=3", ["model", "mapping"]),
        ("model.n_layer.x=3", ["model.n_layer", "integer"]),
    ],
)
def test_bad_value_type_is_one_line(override, words):
    with pytest.raises(LmlabError) as info:
        apply_overrides(RunConfig(), [override])
    message = one_line_error(info)
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "override,choices",
    [
        ("model.norm=batchnorm", ["layernorm", "rmsnorm"]),
        ("model.ffn=tanh", ["relu", "gelu", "swiglu", "geglu"]),
        ("model.arch=lstm", ["transformer", "gru"]),
        ("train.objective=mlm-ish", ["causal-lm"]),
    ],
)
def test_bad_choice_lists_the_valid_choices(override, choices):
    with pytest.raises(LmlabError) as info:
        apply_overrides(RunConfig(), [override])
    message = one_line_error(info)
    assert override.split("=")[1] in message
    for name in choices:
        assert name in message


@pytest.mark.parametrize("override", ["model.n_layer", "=3", "nothing"])
def test_override_without_key_value_form(override):
    with pytest.raises(LmlabError) as info:
        apply_overrides(RunConfig(), [override])
    assert "KEY=VALUE" in one_line_error(info)


def test_yaml_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  n_layer: 2\n  d_model: 64\n  n_kv_heads: null\n"
        "train:\n  lr: 3e-4\n  max_time: 10\n"
        "data:\n  corpus: notes.txt\n  unk: true\n"
    )
    config = load_config_file(path)
    assert config.model.n_layer == 2 and config.model.d_model == 64
    assert config.model.n_head == RunConfig().model.n_head  # untouched fields keep their defaults
    assert config.train.lr == 3e-4 and config.train.max_time == 10.0
    assert config.data.corpus == "notes.txt" and config.data.unk is True


def test_empty_yaml_config_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config_file(path) == RunConfig()


def test_config_round_trips_through_a_dict():
    config = apply_overrides(load_preset("nanogpt-cpu"), ["train.max_time=5", "model.n_kv_heads=2"])
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "text,words",
    [
        ("model: [1, 2\n", ["not valid YAML"]),
        ("- just\n- a list\n", ["mapping"]),
        ("model:\n  layers: 3\n", ["model.layers", "model.n_layer"]),
        ("model:\n  n_layer: three\n", ["model.n_layer", "integer"]),
        ("model:\n  norm: batchnorm\n", ["layernorm", "rmsnorm"]),
        ("model: 7\n", ["model", "mapping"]),
        ("optimizer:\n  lr: 1\n", ["optimizer", "model", "train", "data"]),
    ],
)
def test_yaml_config_errors_are_one_line(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LmlabError) as info:
        load_config_file(path)
    message = one_line_error(info)
    for word in words:
        assert word in message


def test_missing_config_file(tmp_path):
    with pytest.raises(LmlabError) as info:
        load_config_file(tmp_path / "nope.yaml")
    assert "nope.yaml" in one_line_error(info)


def test_importing_the_config_leaves_the_task_stack_unimported():
    code = (
        "import sys, lmlab.training.config; "
        "print(sorted(m for m in sys.modules if m.startswith(('lmlab.objectives', 'lmlab.data', "
        "'lmlab.evaluation', 'lmlab.training.objective_registry'))))"
    )
    src = Path(lmlab.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_config_knows_every_registered_objective_in_order():
    from lmlab.training.objective_registry import OBJECTIVES

    assert OBJECTIVE_NAMES == tuple(OBJECTIVES)


FLOAT_SETTINGS = ["train.lr", "train.min_lr", "train.weight_decay", "train.grad_clip", "train.beta1",
                  "train.beta2", "train.max_time", "model.dropout", "data.val_fraction"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", ".nan", "1e999"])
@pytest.mark.parametrize("key", FLOAT_SETTINGS)
def test_non_finite_numbers_are_rejected_when_the_config_is_read(key, value):
    with pytest.raises(LmlabError) as info:
        apply_overrides(RunConfig(), [f"{key}={value}"])
    message = one_line_error(info)
    assert key in message and "finite" in message


@pytest.mark.parametrize("field", ["lr", "min_lr", "weight_decay", "grad_clip", "beta1", "beta2", "max_time"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_validate_rejects_non_finite_train_settings_made_in_code(field, value):
    from lmlab.training.config import TrainConfig

    with pytest.raises(LmlabError, match=f"train.{field} must be a finite number"):
        TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize("override", ["train.beta1=1.0", "train.beta2=-0.1"])
def test_betas_outside_zero_one_are_rejected(override):
    config = apply_overrides(RunConfig(), [override])
    with pytest.raises(LmlabError, match="beta1 and train.beta2 must be in"):
        config.train.validate()


def test_training_that_cannot_fit_in_memory_is_refused_before_building():
    from lmlab.training.config import check_fits_in_memory, estimated_training_bytes

    config = RunConfig()
    config.model.vocab_size = 65
    needed = estimated_training_bytes(config)
    check_fits_in_memory(config, available=needed)
    with pytest.raises(LmlabError, match="needs at least .* GiB but .* GiB of memory is available") as caught:
        check_fits_in_memory(config, available=needed - 1)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("objective", ["prefix-lm", "mlm", "span-corruption", "bart", "ul2"])
def test_a_gru_trains_only_the_causal_lm_objective(objective):
    from lmlab.training.config import check_objective_fits_arch

    config = RunConfig()
    config.model.arch, config.train.objective = "gru", objective
    with pytest.raises(LmlabError, match=f"objective {objective} trains transformer models"):
        check_objective_fits_arch(config)
    config.train.objective = "causal-lm"
    check_objective_fits_arch(config)
