"""`lmlab generate` with the decoding flags, and `lmlab score`, on a tiny Hugging Face GPT-2 directory."""

import contextlib
import io
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmlab.cli import main  # noqa: E402


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=40, n_positions=64,
                                     bos_token_id=1, eos_token_id=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(36)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_beam_search_with_several_sequences_and_scores(model_dir):
    code, out, err = run("generate", model_dir, "--prompt", "w1 w2 w3", "--strategy", "beam", "--num-beams", 4,
                         "--num-return-sequences", 2, "--length-penalty", 0.6, "--no-repeat-ngram-size", 2,
                         "--max-new-tokens", 6, "--score")
    assert code == 0, err
    assert out.count("=== prompt 1, sequence") == 2 and "beam score" in out
    assert out.count("log-probability:") == 2


def test_batch_file_and_stream(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2\nw5 w6 w7 w8\n\nw9\n")
    code, out, err = run("generate", model_dir, "--batch-file", prompts, "--strategy", "greedy",
                         "--max-new-tokens", 5, "--repetition-penalty", 1.2)
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("===")] == [
        "=== prompt 1 ===", "=== prompt 2 ===", "=== prompt 3 ==="]
    code, out, err = run("generate", model_dir, "--prompt", "w1 w2", "--stream", "--strategy", "sample", "--dtype", "bfloat16",
                         "--top-k", 5, "--min-p", 0.05, "--seed", 0, "--max-new-tokens", 5, "--score")
    assert code == 0, err
    assert out.startswith("w1 w2") and "log-probability:" in out


def test_show_alternatives_prints_the_table(model_dir):
    code, out, err = run("generate", model_dir, "--prompt", "w1 w2", "--show-alternatives", 3, "--max-new-tokens", 4)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "| Input | Choice 1 | Choice 2 | Choice 3 |" and len(lines) == 2 + 4 and "%)" in lines[2]


def test_score_command(model_dir):
    code, out, err = run("score", model_dir, "--prompt", "w1 w2", "--continuation", "w3 w4")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] == 2 and result["logprob"] < 0 and result["perplexity"] > 1


@pytest.mark.parametrize("flags,words", [
    (["--strategy", "sample", "--top-p", "1.5"], ["top-p"]),
    (["--strategy", "sample", "--temperature", "0"], ["temperature"]),
    (["--strategy", "beam", "--num-beams", "0"], ["num-beams"]),
    (["--strategy", "beam", "--num-beams", "2", "--num-return-sequences", "3"], ["num-return-sequences"]),
    (["--strategy", "beam", "--stream"], ["--stream"]),
    (["--show-alternatives", "0"], ["show-alternatives"]),
    (["--strategy", "greedy", "--draft-tokens", "9"], ["draft-tokens"]),
])
def test_impossible_settings_exit_2(model_dir, flags, words):
    code, out, err = run("generate", model_dir, "--prompt", "w1", "--max-new-tokens", 3, *flags)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert all(w in err for w in words)


def test_greedy_with_and_without_the_draft_prints_the_same_text(model_dir):
    outputs = []
    for k in ("0", "5"):
        code, out, err = run("generate", model_dir, "--prompt", "w1 w2", "--strategy", "greedy",
                             "--max-new-tokens", 12, "--draft-tokens", k)
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
