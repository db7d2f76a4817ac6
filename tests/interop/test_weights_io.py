"""Reading Hugging Face weight files and config.json, and streaming tensors into a model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from lmlab.errors import LmlabError
from lmlab.interop.hf_config import read_hf_config
from lmlab.interop.weights import Target, WeightSource, find_weight_file, load_into


def tiny_gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=50)
    return transformers.GPT2LMHeadModel(config).eval()


def empty_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.full_like(tensor, float("nan")) for name, tensor in state.items()}


def shard(state: dict[str, torch.Tensor], directory: Path, parts: int, suffix: str) -> None:
    """Write ``state`` as ``parts`` shards plus a transformers-style index."""
    names = list(state)
    prefix = "model" if suffix == "safetensors" else "pytorch_model"
    weight_map = {}
    for part in range(parts):
        file = f"{prefix}-{part + 1:05d}-of-{parts:05d}.{suffix}"
        chunk = {name: state[name].contiguous() for name in names[part::parts]}
        if suffix == "safetensors":
            save_file(chunk, str(directory / file))
        else:
            torch.save(chunk, directory / file)
        weight_map.update(dict.fromkeys(chunk, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / f"{prefix}.{suffix}.index.json").write_text(json.dumps(index))


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in tiny_gpt2().state_dict().items()}


# ---------------------------------------------------------------- listing and reading


def test_save_pretrained_checkpoint_lists_and_loads(tmp_path):
    model = tiny_gpt2()
    model.save_pretrained(tmp_path)
    source = WeightSource.from_directory(tmp_path)
    expected = model.state_dict()
    assert find_weight_file(tmp_path).name == "model.safetensors"
    for name in source.names():
        info = source.info(name)
        assert info.shape == tuple(expected[name].shape) and info.dtype == torch.float32
        torch.testing.assert_close(source.get(name), expected[name], rtol=0, atol=0)
    assert source.nbytes == sum(t.numel() * 4 for name, t in expected.items() if name in source)


def test_sharded_save_pretrained_checkpoint(tmp_path):
    model = tiny_gpt2()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert find_weight_file(tmp_path).name == "model.safetensors.index.json"
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    source = WeightSource.from_directory(tmp_path)
    expected = model.state_dict()
    for name, tensor in source.iter_tensors():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_formats_round_trip_through_load_into(tmp_path, state, layout, suffix):
    state["transformer.h.0.ln_1.weight"] = state["transformer.h.0.ln_1.weight"].to(torch.bfloat16)
    state.pop("lm_head.weight")  # tied to the embedding, as in real checkpoints
    if layout == "sharded":
        shard(state, tmp_path, 3, suffix)
    elif suffix == "safetensors":
        save_file(state, str(tmp_path / "model.safetensors"))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    source = WeightSource.from_directory(tmp_path)
    assert source.info("transformer.h.0.ln_1.weight").dtype == torch.bfloat16
    target = empty_like(tiny_gpt2().state_dict())
    load_into(target, source, lambda name: name, allow_missing=["lm_head.weight"])
    for name, tensor in state.items():
        torch.testing.assert_close(target[name], tensor.float(), rtol=0, atol=0)
    assert target["lm_head.weight"].isnan().all()


def test_safetensors_is_preferred_over_bin(tmp_path, state):
    torch.save(state, tmp_path / "pytorch_model.bin")
    save_file(state, str(tmp_path / "model.safetensors"))
    assert find_weight_file(tmp_path).name == "model.safetensors"


# ---------------------------------------------------------------- load_into


def test_load_into_a_model_with_transforms_ignores_and_fused_targets(tmp_path, state):
    """Source c_attn (Conv1D, [in, 3·out]) → three Linear-style [out, in] targets; two sources
    fill the halves of one fused target."""
    d = 32
    target = {
        "q": torch.empty(d, d),
        "k": torch.empty(d, d),
        "v": torch.empty(d, d),
        "norms": torch.empty(2, d),
    }
    name_map = {
        "transformer.h.0.attn.c_attn.weight": [
            Target(name, transform=lambda t, i=i: t[:, i * d : (i + 1) * d].t())
            for i, name in enumerate("qkv")
        ],
        "transformer.h.0.ln_1.weight": Target("norms", index=0),
        "transformer.h.0.ln_2.weight": Target("norms", index=1),
    }
    save_file(state, str(tmp_path / "model.safetensors"))
    source = WeightSource.from_directory(tmp_path)
    load_into(
        target,
        source,
        name_map,
        ignore=[
            "transformer.h.1.*",
            "*.bias",
            "*.c_proj.*",
            "*.c_fc.*",
            "transformer.w?e.weight",
            "transformer.ln_f.*",
            "lm_head.*",
        ],
    )
    c_attn = state["transformer.h.0.attn.c_attn.weight"]
    torch.testing.assert_close(target["k"], c_attn[:, d : 2 * d].t())
    torch.testing.assert_close(target["norms"][1], state["transformer.h.0.ln_2.weight"])


def test_load_into_reports_unused_and_unfilled_names(tmp_path, state):
    save_file(state, str(tmp_path / "model.safetensors"))
    source = WeightSource.from_directory(tmp_path)
    target = empty_like(state)
    target["extra.weight"] = torch.empty(3)
    renamed = {name: name for name in state if "h.1" not in name}
    with pytest.raises(LmlabError) as error:
        load_into(target, source, renamed, allow_missing=["transformer.h.1.*"])
    message = str(error.value)
    assert "\n" not in message
    assert "checkpoint tensors never used: transformer.h.1." in message and "(+2 more)" in message
    assert "model tensors never filled: extra.weight;" in message
    assert (
        target["transformer.wte.weight"].isnan().all()
    )  # nothing is read before the plan is checked


def test_load_into_shape_mismatch_names_tensor_and_shapes(tmp_path, state):
    save_file(state, str(tmp_path / "model.safetensors"))
    target = empty_like(state)
    target["transformer.wpe.weight"] = torch.empty(8, 32)
    with pytest.raises(
        LmlabError, match=r"'transformer.wpe.weight' has shape \(16, 32\).*expects \(8, 32\)"
    ):
        load_into(target, WeightSource.from_directory(tmp_path), lambda name: name)


def test_load_into_rejects_unknown_target_and_double_fill(tmp_path, state):
    save_file(state, str(tmp_path / "model.safetensors"))
    source = WeightSource.from_directory(tmp_path)
    with pytest.raises(LmlabError, match="maps to 'nope', which the model does not have"):
        load_into(empty_like(state), source, lambda name: "nope")
    target = {"ln": torch.empty(32)}
    with pytest.raises(LmlabError, match="filled more than once: ln"):
        load_into(
            target,
            source,
            lambda name: "ln" if name.endswith("ln_1.weight") else None,
            ignore=["*"],
        )


# ---------------------------------------------------------------- errors


def test_directory_and_file_errors(tmp_path, state):
    with pytest.raises(LmlabError, match="does not exist"):
        WeightSource.from_directory(tmp_path / "missing")
    with pytest.raises(
        LmlabError,
        match="looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin",
    ):
        WeightSource.from_directory(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LmlabError, match="not a valid safetensors file .*truncated or corrupt"):
        WeightSource.from_directory(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(LmlabError, match="not a valid safetensors file"):
        WeightSource.from_directory(tmp_path)


def test_index_errors(tmp_path, state):
    shard(state, tmp_path, 2, "safetensors")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        LmlabError, match="references missing shards model-00002-of-00002.safetensors"
    ):
        WeightSource.from_directory(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(LmlabError, match="not a valid shard index"):
        WeightSource.from_directory(tmp_path)


def test_unsupported_dtype_and_unsafe_pickle(tmp_path):
    save_file({"w": torch.zeros(4, dtype=torch.float8_e4m3fn)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(LmlabError, match="dtype F8_E4M3, which lmlab cannot load"):
        WeightSource.from_directory(tmp_path)
    other = tmp_path / "bin"
    other.mkdir()
    torch.save({"w": torch.zeros(2), "config": Path("x")}, other / "pytorch_model.bin")
    with pytest.raises(LmlabError, match="cannot load .*pytorch_model.bin safely as tensors only"):
        WeightSource.from_directory(other)


# ---------------------------------------------------------------- config.json


@pytest.mark.parametrize(
    "config",
    [
        transformers.GPT2Config(),
        transformers.BertConfig(),
        transformers.RobertaConfig(),
        transformers.LlamaConfig(num_key_value_heads=8),
        transformers.T5Config(),
        transformers.BartConfig(),
    ],
    ids=lambda config: config.model_type,
)
def test_read_hf_config_accepts_transformers_configs(tmp_path, config):
    config.save_pretrained(tmp_path)
    read = read_hf_config(tmp_path)
    assert read.model_type == config.model_type
    assert read.require("vocab_size") == config.vocab_size


@pytest.mark.parametrize(
    "values, message",
    [
        ({"model_type": "mamba"}, "model_type 'mamba', which lmlab cannot load"),
        (
            {"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2},
            "no 'n_positions'",
        ),
        (
            {
                "model_type": "gpt2",
                "vocab_size": 10,
                "n_embd": 8,
                "n_layer": True,
                "n_head": 2,
                "n_positions": 4,
            },
            "n_layer must be a positive integer, got True",
        ),
        (
            {
                "model_type": "gpt2",
                "vocab_size": 10,
                "n_embd": 10,
                "n_layer": 1,
                "n_head": 4,
                "n_positions": 4,
            },
            "n_embd=10 is not divisible by n_head=4",
        ),
        (
            {
                "model_type": "llama",
                "vocab_size": 10,
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "intermediate_size": 16,
                "num_key_value_heads": 3,
            },
            "num_attention_heads=4 is not divisible by num_key_value_heads=3",
        ),
    ],
)
def test_read_hf_config_errors(tmp_path, values, message):
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(LmlabError, match=message):
        read_hf_config(tmp_path)


def test_read_hf_config_file_errors(tmp_path):
    with pytest.raises(LmlabError, match="no config.json"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(LmlabError, match="not valid JSON"):
        read_hf_config(tmp_path / "config.json")


# ---------------------------------------------------------------- peak memory

MEASURE = textwrap.dedent("""
    import json, re, sys
    import psutil, torch
    from lmlab.interop.weights import WeightSource, load_into

    def peak_rss():  # this process's high-water mark (ru_maxrss would include the parent's, kept across exec)
        status = open("/proc/self/status").read()
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024

    source = WeightSource.from_file(sys.argv[1])
    before = psutil.Process().memory_info().rss
    target = {name: torch.zeros(source.info(name).shape) for name in source.names()}  # touched pages
    allocated = psutil.Process().memory_info().rss
    load_into(target, source, lambda name: name)
    print(json.dumps({"weights": source.nbytes, "before": before, "allocated": allocated, "peak": peak_rss()}))
    """)


def big_state(megabytes: int) -> dict[str, torch.Tensor]:
    """A random float32 state dict of about ``megabytes`` MB: an embedding and 12 blocks."""
    generator = torch.Generator().manual_seed(0)
    d = 512
    state = {"embed.weight": torch.randn(8192, d, generator=generator)}
    per_block = (megabytes * 2**20 // 4 - 8192 * d) // 12
    for block in range(12):
        state[f"blocks.{block}.w1"] = torch.randn(per_block // d, d, generator=generator)
    return state


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_peak_memory_while_loading_stays_under_one_and_a_half_times_the_weights(
    tmp_path, layout, suffix
):
    state = big_state(160)
    if layout == "sharded":
        shard(state, tmp_path, 4, suffix)
    elif suffix == "safetensors":
        save_file(state, str(tmp_path / "model.safetensors"))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    del state
    file = find_weight_file(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(file)], capture_output=True, text=True, check=True
    )
    measured = json.loads(result.stdout)
    ratio = (measured["peak"] - measured["before"]) / measured["weights"]
    print(
        f"{file.name}: peak RSS while loading = {ratio:.3f} × weights "
        f"(beyond the model itself: {(measured['peak'] - measured['allocated']) / measured['weights']:.3f} ×)"
    )
    assert ratio <= 1.5
