"""Every subcommand turns each class of bad input into exit code 2 and one stderr line, never a
traceback (issue 12, items 15 and 16).

The subcommands are discovered from :func:`lmlab.cli.build_parser`, so a new one fails
:func:`test_every_subcommand_has_rows` until :data:`CASES` gets rows for it. The classes: text
that is not UTF-8 (files and stdin), sizes that cannot be allocated, objectives the model cannot
train, shard ids outside the vocabulary, models that cannot do what is asked, a missing optional
dependency, NaN decoding settings. Everything runs in-process (``main(argv)``) but the broken-pipe
check, which needs a real pipe.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lmlab.cli import build_parser, main
from lmlab.output_dir import claim_output_dir
from lmlab.recipes import RECIPE_KIND
from lmlab.recipes.base import ARMS_DIR
from tiny_models import chat_model_dir

SRC = Path(__file__).resolve().parents[1] / "src"
TEXT = "to be, or not to be, that is the question.\n" * 40
TINY = ["model.n_layer=1", "model.n_head=2", "model.d_model=16", "model.context_length=16",
        "train.batch_size=4", "train.eval_batches=1", "train.sample_chars=0", "train.warmup_steps=1"]
NOT_UTF8 = b"fine\n\xff\xfe caf\xe9\n"
HANG_GUARD_S = 3600  # only catches a hung child; never a limit on how long it may take


@dataclass(frozen=True)
class Case:
    """One bad input: argv (``{name}`` fields filled from the inputs fixture), optional bytes on
    stdin, optional module made unimportable, and words the error line must contain."""

    argv: tuple[str, ...]
    stdin: bytes | None = None
    missing_module: str | None = None
    says: str = ""


def case(*argv: str, stdin: bytes | None = None, missing_module: str | None = None, says: str = "") -> Case:
    return Case(argv, stdin, missing_module, says)


TRAIN = ("train", "--out", "{tmp}/train-out", "--max-steps", "1", "--no-progress")
GENERATE = ("generate", "{run}", "--max-new-tokens", "2")
GRID = ("--grid", "model.n_layer=1,2", "--out", "{tmp}/compare-out", "--max-steps", "1", "--no-progress")

CASES: dict[str, dict[str, Case]] = {
    "train": {
        "config not UTF-8": case(*TRAIN, "--config", "{not_utf8}"),
        "corpus not UTF-8": case(*TRAIN, "--data", "{not_utf8}"),
        "context beyond memory": case(*TRAIN, "--data", "{text}", "--set", *TINY, "model.context_length=10000000000"),
        "model beyond memory": case(*TRAIN, "--data", "{text}", "--set", *TINY,
                                    "model.d_model=1048576", "model.n_head=1"),
        "gru span-corruption": case(*TRAIN, "--data", "{text}", "--objective", "span-corruption",
                                    "--set", *TINY, "model.arch=gru", "model.backbone=encoder-decoder"),
        "gru bart": case(*TRAIN, "--data", "{text}", "--objective", "bart",
                         "--set", *TINY, "model.arch=gru", "model.backbone=encoder-decoder"),
        "gru prefix-lm": case(*TRAIN, "--data", "{text}", "--objective", "prefix-lm", "--set", *TINY, "model.arch=gru"),
        "shard ids outside the vocabulary": case(*TRAIN, "--data", "{bad_shards}", "--set", *TINY),
        "no processes": case(*TRAIN, "--data", "{text}", "--nproc", "0", says="--nproc"),
        "negative processes": case(*TRAIN, "--data", "{text}", "--nproc", "-2", says="--nproc"),
        "more processes than the machine has": case(*TRAIN, "--data", "{text}", "--nproc", "100000",
                                                     says="--nproc 100000 is more processes"),
        "processes that stop on a mistake": case(*TRAIN, "--data", "{text}", "--nproc", "2", "--set", *TINY,
                                                 "train.distributed=ddp", "train.batch_size=3",
                                                 says="processes under torchrun stopped"),
        "ddp without torchrun": case(*TRAIN, "--data", "{text}", "--set", *TINY, "train.distributed=ddp",
                                     says="torchrun"),
        "unknown distributed mode": case(*TRAIN, "--data", "{text}", "--set", "train.distributed=horovod",
                                         says="train.distributed"),
    },
    "generate": {
        "batch file not UTF-8": case(*GENERATE, "--batch-file", "{not_utf8}"),
        "an encoder": case("generate", "{encoder_run}", "--max-new-tokens", "2"),
        "nan length penalty": case(*GENERATE, "--strategy", "beam", "--length-penalty", "nan"),
        "nan temperature": case(*GENERATE, "--temperature", "nan"),
        "nan top-p": case(*GENERATE, "--top-p", "nan"),
        "nan min-p": case(*GENERATE, "--min-p", "nan"),
        "nan repetition penalty": case(*GENERATE, "--repetition-penalty", "nan"),
        "inf temperature": case(*GENERATE, "--temperature", "inf"),
    },
    "score": {
        "an encoder": case("score", "{encoder_run}", "--prompt", "to", "--continuation", " be"),
    },
    "eval": {
        "corpus not UTF-8": case("eval", "{run}", "--data", "{not_utf8}"),
    },
    "info": {
        "no such run": case("info", "{tmp}/missing"),
    },
    "compare": {
        "matplotlib missing": case("compare", "--data", "{text}", *GRID, missing_module="matplotlib"),
        "config not UTF-8": case("compare", "--config", "{not_utf8}", *GRID),
    },
    "tokenizer train": {
        "data not UTF-8": case("tokenizer", "train", "--vocab-size", "300", "--data", "{not_utf8}",
                               "--out", "{tmp}/tok-a"),
        "vocabulary beyond reason": case("tokenizer", "train", "--vocab-size", str(1 << 32), "--data", "{text}",
                                         "--out", "{tmp}/tok-b"),
    },
    "tokenizer encode": {
        "stdin not UTF-8": case("tokenizer", "encode", "--tokenizer", "{bpe}", stdin=NOT_UTF8, says="stdin is not UTF-8"),
    },
    "tokenizer decode": {
        "stdin not UTF-8": case("tokenizer", "decode", "--tokenizer", "{bpe}", stdin=b"1 2\n3 \xff4\n", says="stdin is not UTF-8"),
    },
    "data prepare": {
        "data not UTF-8": case("data", "prepare", "--tokenizer", "chess-pgn", "--data", "{not_utf8}",
                               "--out", "{tmp}/shards-out"),
        "zstandard missing": case("data", "prepare", "--tokenizer", "chess-pgn", "--data", "{games_zst}",
                                  "--out", "{tmp}/shards-zst", missing_module="zstandard"),
    },
    "convert": {
        "not a model": case("convert", "{not_utf8}", "{tmp}/converted"),
        "no such run (--to hf)": case("convert", "{tmp}/missing", "{tmp}/converted-b", "--to", "hf"),
    },
    "embed": {
        "file not UTF-8": case("embed", "{tmp}", "--file", "{not_utf8}"),
    },
    "chat": {
        "stdin not UTF-8": case("chat", "{chat}", "--max-new-tokens", "2", stdin=NOT_UTF8, says="stdin is not UTF-8"),
    },
    "finetune": {
        "data not UTF-8": case("finetune", "{encoder_run}", "--task", "classify", "--data", "{not_utf8}",
                               "--out", "{tmp}/ft-a"),
        "classify on a GRU": case("finetune", "{gru_run}", "--task", "classify", "--data", "{labelled}",
                                  "--out", "{tmp}/ft-b"),
        "nan learning rate": case("finetune", "{encoder_run}", "--task", "classify", "--data", "{labelled}",
                                  "--out", "{tmp}/ft-c", "--lr", "nan"),
    },
    "classify": {
        "file not UTF-8": case("classify", "{encoder_run}", "--file", "{not_utf8}"),
    },
    "seq2seq": {
        "file not UTF-8": case("seq2seq", "{run}", "--file", "{not_utf8}"),
        "nan temperature": case("seq2seq", "{run}", "--text", "to be", "--temperature", "nan"),
    },
    "fill-mask": {
        "a decoder": case("fill-mask", "{run}", "to be [MASK]"),
    },
    "plot": {
        "a metric never logged": case("plot", "{run}", "--out", "{tmp}/curves.png", "--metric", "moe_load",
                                      says="never logged moe_load; it has:"),
        "not a run": case("plot", "{tmp}", "--out", "{tmp}/curves-b.png", says="metrics.jsonl"),
        "matplotlib missing": case("plot", "{run}", "--out", "{tmp}/curves-c.png", missing_module="matplotlib"),
    },
    "embeddings": {
        "fewer than two words": case("embeddings", "{run}", "--words", "t", "--out", "{tmp}/map.png",
                                     says="at least two words"),
        "file not UTF-8": case("embeddings", "{run}", "--file", "{not_utf8}", "--out", "{tmp}/map.html"),
        "not a picture": case("embeddings", "{run}", "--words", "t", "o", "--out", "{tmp}/map.txt", says=".png or .html"),
    },
    "probs": {
        "an encoder": case("probs", "{encoder_run}", "--prompt", "to", "--out", "{tmp}/probs.png"),
        "nan temperature": case("probs", "{run}", "--prompt", "to", "--out", "{tmp}/probs.png",
                                "--temperatures", "nan"),
        "top-k zero": case("probs", "{run}", "--prompt", "to", "--out", "{tmp}/probs.png", "--top-k", "0",
                           says="top-k must be at least 1"),
    },
    "attention": {
        "a GRU": case("attention", "{gru_run}", "--text", "to be", "--out", "{tmp}/att-a.html",
                      says="no attention layers"),
        "unknown layer": case("attention", "{run}", "--text", "to be", "--layers", "0,5", "--out", "{tmp}/att-b.html",
                              says="there is no layer 5"),
        "unknown head": case("attention", "{run}", "--text", "to be", "--heads", "7", "--out", "{tmp}/att-c.html",
                             says="there is no head 7"),
        "empty text": case("attention", "{run}", "--text", "", "--out", "{tmp}/att-d.html", says="--text is empty"),
        "too long to draw": case("attention", "{run}", "--text", "to be or not", "--max-tokens", "4",
                                 "--out", "{tmp}/att-e.html", says="--max-tokens"),
        "an encoder asked to generate": case("attention", "{encoder_run}", "--text", "to be", "--generate", "2",
                                             "--out", "{tmp}/att-f.html", says="does not generate"),
        "layers not numbers": case("attention", "{run}", "--text", "to be", "--layers", "first",
                                   "--out", "{tmp}/att-g.html", says="comma-separated numbers"),
    },
    "serve": {
        "no such model": case("serve", "{tmp}/no-model", "--port", "0", says="does not exist"),
        "port below 0": case("serve", "{run}", "--port", "-1", says="--port"),
        "port above 65535": case("serve", "{run}", "--port", "70000", says="--port"),
        "max-batch 0": case("serve", "{run}", "--port", "0", "--max-batch", "0", says="--max-batch"),
        "draft-tokens 9": case("serve", "{run}", "--port", "0", "--draft-tokens", "9", says="--draft-tokens must be between 0 and 7"),
        "a GRU": case("serve", "{gru_run}", "--port", "0", says="KV cache"),
        "an encoder run": case("serve", "{encoder_run}", "--port", "0", says="lmlab convert"),
        "fastapi missing": case("serve", "{run}", "--port", "0", missing_module="fastapi", says="lmlab[serve]"),
    },
    "chess play": {
        "not a chess model": case("chess", "play", "{run}", stdin=b"e4\n", says="not a chess model"),
        "negative resample": case("chess", "play", "{run}", "--resample", "-1", says="--resample"),
        "nan temperature": case("chess", "play", "{run}", "--temperature", "nan", says="--temperature"),
        "missing run": case("chess", "play", "{tmp}/no-such-run", says="no-such-run"),
    },
    "recipe list": {
        "an argument": case("recipe", "list", "shakespeare", says="unrecognized arguments"),
    },
    "recipe run": {
        "unknown recipe": case("recipe", "run", "no-such-recipe", "--out", "{tmp}/recipe-unknown",
                               says="unknown recipe 'no-such-recipe'"),
        "max-time 0": case("recipe", "run", "shakespeare", "--max-time", "0", "--data", "{text}",
                           "--out", "{tmp}/recipe-zero", says="--max-time must be positive"),
        "data missing": case("recipe", "run", "shakespeare", "--data", "{tmp}/no-such-file.txt",
                             "--out", "{tmp}/recipe-nodata", says="no such file"),
        "out holds a run, no --resume": case("recipe", "run", "shakespeare", "--data", "{text}",
                                             "--out", "{recipe_out}", says="pass --resume"),
        "--val for a recipe without one": case("recipe", "run", "shakespeare", "--data", "{text}", "--val", "{text}",
                                               "--out", "{tmp}/recipe-val", says="takes no --val"),
        "--val missing": case("recipe", "run", "chess", "--data", "{games_zst}", "--val", "{tmp}/no-such-val.pgn",
                              "--out", "{tmp}/recipe-noval", says="--val"),
    },
}


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """The leaf subcommands of ``parser`` ("train", "tokenizer encode", ...)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += subcommands(child, f"{prefix}{name} ") or [f"{prefix}{name}"]
    return found


def test_every_subcommand_has_rows():
    assert sorted(subcommands(build_parser())) == sorted(CASES)


# ------------------------------------------------------------------------------- the inputs
def _run_ok(*argv: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        code = main(list(argv))
    assert code == 0, err.getvalue()


def _bad_shards(tmp: Path, text: Path) -> Path:
    """Shards of ``text`` whose first shard then had its ids overwritten with 65535."""
    from lmlab.data.shards import ShardedTokens, prepare_shards
    from lmlab.tokenizers import CharTokenizer

    out = tmp / "bad-shards"
    prepare_shards(CharTokenizer.from_text(TEXT), text, out, doc_separator=None)
    shard = out / ShardedTokens.open(out).index.shards[0].file
    shard.write_bytes(np.full(shard.stat().st_size // 2, 65535, dtype=np.uint16).tobytes())
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    pytest.importorskip("transformers")
    tmp = tmp_path_factory.mktemp("bad-inputs")
    text = tmp / "hamlet.txt"
    text.write_text(TEXT, encoding="utf-8")
    not_utf8 = tmp / "not-utf8.txt"
    not_utf8.write_bytes(NOT_UTF8)
    games_zst = tmp / "games.pgn.zst"
    games_zst.write_bytes(b"\x28\xb5\x2f\xfd")
    _run_ok("train", "--data", str(text), "--out", str(tmp / "run"), "--max-steps", "1", "--no-progress",
           "--set", *TINY)
    _run_ok("tokenizer", "train", "--vocab-size", "300", "--data", str(text), "--out", str(tmp / "bpe"))
    _run_ok("train", "--data", str(text), "--out", str(tmp / "encoder"), "--max-steps", "1", "--no-progress",
           "--objective", "mlm", "--set", *TINY, "model.backbone=encoder")
    _run_ok("train", "--data", str(text), "--out", str(tmp / "gru"), "--max-steps", "1", "--no-progress",
           "--set", *TINY, "model.arch=gru", "model.rnn_hidden=16")
    recipe_out = claim_output_dir(tmp / "recipe-out", RECIPE_KIND)  # what a stopped recipe run leaves
    (recipe_out / ARMS_DIR).mkdir()
    labelled = tmp / "labelled.csv"
    labelled.write_text("text,label\n" + "".join(f"to be {i},{i % 2}\n" for i in range(20)), encoding="utf-8")
    return {"tmp": str(tmp), "text": str(text), "not_utf8": str(not_utf8), "games_zst": str(games_zst),
            "run": str(tmp / "run"), "encoder_run": str(tmp / "encoder"), "bad_shards": str(_bad_shards(tmp, text)),
            "chat": str(chat_model_dir(tmp / "chat")), "bpe": str(tmp / "bpe"), "gru_run": str(tmp / "gru"),
            "labelled": str(labelled), "recipe_out": str(recipe_out)}


# ------------------------------------------------------------------------------- the checks
ROWS = [pytest.param(command, name, id=f"{command}: {name}") for command, rows in CASES.items() for name in rows]


@pytest.mark.parametrize(("command", "name"), ROWS)
def test_bad_input_is_one_line_and_exit_code_2(inputs, command, name, monkeypatch, capsys):
    row = CASES[command][name]
    if row.stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(row.stdin), encoding="utf-8"))
    if row.missing_module is not None:
        monkeypatch.setitem(sys.modules, row.missing_module, None)  # what an uninstalled package looks like
    code = main([arg.format(**inputs) for arg in row.argv])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("lmlab: error: "), stderr
    assert row.says in stderr


def test_a_reader_that_stops_early_ends_generate_quietly(inputs):
    """``lmlab generate ... | head``: no "Broken pipe" message, the exit code of a tool killed by
    SIGPIPE (141), as Unix tools end."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lmlab.cli", "generate", inputs["run"], "--max-new-tokens", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert process.stdout.read(4)
    process.stdout.close()
    stderr = process.communicate(timeout=HANG_GUARD_S)[1].decode()
    assert process.returncode == 141, stderr
    assert stderr == ""
