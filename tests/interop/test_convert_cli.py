"""`lmlab convert` both ways, load_run on HF directories (generate/info), `lmlab chat`, and one clear
error (exit 2, one stderr line) for each kind of bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch, write_tokenizer  # noqa: E402

from lmlab.cli import main  # noqa: E402
from lmlab.errors import LmlabError  # noqa: E402
from lmlab.interop import load_hf  # noqa: E402
from lmlab.training.run import load_run  # noqa: E402


@pytest.fixture()
def gpt2_dir(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=99, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    write_tokenizer(folder, 99)
    return folder, model


def test_convert_to_run_and_back_to_hf(gpt2_dir, tmp_path, capsys):
    folder, ref = gpt2_dir
    assert main(["convert", str(folder), str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    ids, mask = padded_batch(99, [8, 5])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long()).logits
        assert max_diff(run.model(ids, attention_mask=mask), expected, mask) <= TOL
    assert run.tokenizer.encode("w1 w2") == [5, 6]
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "gpt2"
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert max_diff(back(ids, attention_mask=mask.long()).logits, expected, mask) <= TOL
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("w1 w2")["input_ids"] == [5, 6]


def test_generate_and_info_accept_an_hf_directory(gpt2_dir, capsys):
    folder, ref = gpt2_dir
    assert main(["generate", str(folder), "--prompt", "w1 w2", "--strategy", "greedy", "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    expected = ref.generate(torch.tensor([[5, 6]]), max_new_tokens=4, do_sample=False, pad_token_id=0)[0, 2:]
    assert text.startswith("w1 w2")  # the prompt, then the new tokens (decoded on their own)
    assert text[len("w1 w2"):].split() == [f"w{i - 4}" for i in expected.tolist()]
    assert main(["info", str(folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["model"]["d_model"] == 64


def _llama_chat_dir(tmp_path, silent: bool, first_word: str = "</s>"):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, max_position_embeddings=128, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    if silent:  # every logit 0 → greedy picks id 0, which is </s>
        with torch.no_grad():
            model.lm_head.weight.zero_()
    folder = tmp_path / "chat"
    model.save_pretrained(folder)
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [first_word, "<s>", "<pad>", "<unk>", "<|user|>", "<|assistant|>"] + [f"w{i}" for i in range(33)]
    words.append("w33" if first_word == "</s>" else "</s>")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(words[:6])
    tok.save(str(folder / "tokenizer.json"))
    template = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}<|assistant|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}))
    return folder


def test_chat_reads_turns_from_stdin_and_stops_at_eos(tmp_path, monkeypatch, capsys):
    import io

    folder = _llama_chat_dir(tmp_path, silent=True)
    monkeypatch.setattr("sys.stdin", io.StringIO("w1 w2\n\nw3\n"))
    assert main(["chat", str(folder), "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == "\n\n"  # two turns, each reply empty: EOS came first


def test_chat_stops_at_the_end_of_turn_token(tmp_path, monkeypatch, capsys):
    import io

    folder = _llama_chat_dir(tmp_path, silent=True, first_word="<|im_end|>")  # greedy picks <|im_end|>, not EOS
    monkeypatch.setattr("sys.stdin", io.StringIO("w1 w2\n"))
    assert main(["chat", str(folder), "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == "\n"  # the reply ended at once, and the token was not printed


def test_chat_streams_a_reply(tmp_path, monkeypatch, capsys):
    import io

    folder = _llama_chat_dir(tmp_path, silent=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("w1 w2\n"))
    assert main(["chat", str(folder), "--max-new-tokens", "3", "--strategy", "sample", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1


# ---------------------------------------------------------------- bad inputs


def _rewrite_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _add_tensor(folder, name):
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = torch.zeros(3)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _drop_tensor(folder, name):
    tensors = load_file(folder / "model.safetensors")
    del tensors[name]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


BAD = {
    "unknown architecture": (lambda f: _rewrite_config(f, model_type="mamba"), "model_type 'mamba'"),
    "missing weight file": (lambda f: (f / "model.safetensors").unlink(), "no weights in"),
    "truncated safetensors": (
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
        "truncated or corrupt"),
    "mismatched shapes": (lambda f: _rewrite_config(f, n_embd=32, n_head=4), "has shape"),
    "unused tensor": (lambda f: _add_tensor(f, "transformer.h.0.adapter.weight"), "never used: transformer.h.0.adapter.weight"),
    "missing tensor": (lambda f: _drop_tensor(f, "transformer.h.1.mlp.c_fc.weight"), "never filled: backbone.blocks.1.ffn.up.weight"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_give_one_clear_error(gpt2_dir, tmp_path, capsys, case):
    folder, _ = gpt2_dir
    break_it, message = BAD[case]
    break_it(folder)
    with pytest.raises(LmlabError, match=message):
        load_hf(folder)
    capsys.readouterr()
    assert main(["convert", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmlab: error:") and message.split(":")[0] in err


# ---------------------------------------------------------------- the destination is not trusted blindly
def test_convert_to_hf_refuses_an_existing_model_directory(gpt2_dir, tmp_path, capsys):
    folder, _ = gpt2_dir
    assert main(["convert", str(folder), str(tmp_path / "run")]) == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "run"), str(folder), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not write" in err and str(folder) in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    for _ in range(2):  # lmlab's own export directory may be written again
        assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"]) == 0


def test_convert_to_lmlab_refuses_a_directory_with_foreign_files(gpt2_dir, tmp_path, capsys):
    folder, _ = gpt2_dir
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metrics.jsonl").write_text("mine\n")
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    assert main(["convert", str(folder), str(tmp_path / "mine")]) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["metrics.jsonl", "notes.txt"]
