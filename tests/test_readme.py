"""Every bash and Python block of the README runs as pasted (issue 12, item 19).

The blocks run in README order in one scratch directory that holds what they name (a tiny
``tinyshakespeare.txt``, ``corpus.txt``, ``gpt2-dir``, ``path/to/chat-model``, ...; the default
corpus comes from ``$LMLAB_CACHE``, so nothing is downloaded). Training runs get a tiny budget by
appending documented flags (:data:`TINY_BUDGET`) to each ``lmlab train`` and ``lmlab compare``, and
``lmlab finetune`` gets :data:`FINETUNE_BUDGET`; Python blocks get theirs through :data:`PYTHON_BUDGETS`.
The fine-tuning examples' models (``path/to/bert``, ``path/to/t5``, ...) are tiny random ones and
their Hub id (``org/chat-model``) comes from an offline Hub cache in the scratch directory. What
cannot run offline or within a test is listed with its reason: :data:`NETWORK_BLOCKS` are skipped,
:data:`HELP_ONLY` commands run with ``--help``, and so do :data:`GPU_COMMANDS` on a machine with
fewer CUDA GPUs than they need. :data:`SERVED_BLOCKS` (the HTTP examples) run against ``lmlab serve``
started for them on a free loopback port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXCERPT = ROOT / "tests" / "fixtures" / "shakespeare_excerpt.txt"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the offline Hub cache's one revision
HANG_GUARD_S = 3600  # only catches a hung command; never a limit on how long it may take

TINY_MODEL = ["model.n_layer=2", "model.n_head=2", "model.d_model=16", "model.context_length=64",
              "train.batch_size=2", "train.eval_batches=1", "train.eval_every=1", "train.checkpoint_every=1",
              "train.warmup_steps=1", "train.sample_chars=8", "data.unk=true"]
TINY_BUDGET = ["--max-steps", "2", "--no-progress", "--set", *TINY_MODEL]
# Fine-tuning runs stop after two steps (the first that applies of these and the README's --epochs / --max-time).
FINETUNE_BUDGET = ["--max-steps", "2", "--no-progress"]

# Blocks that need the network, by their first line, with the reason they are not run.
NETWORK_BLOCKS = {
    "pip install torch==2.13.0 -e . && lmlab train": "pip install needs the package index",
    'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q && LMLAB_NATIVE_KERNELS=0 python -m pytest '
    "-q tests/generation tests/interop tests/layers tests/models":
        "pip install needs the package index (and it runs the whole suite, this test included)",
}
# Commands (their first words) that run as ``--help`` only, with the reason.
HELP_ONLY = {
    "lmlab info model.Q4_0.gguf": "needs a GGUF file converted by llama.cpp",
    "python benchmarks/train_nanogpt_cpu.py": "a benchmark: minutes of training",
    "python benchmarks/generate_vs_transformers.py": "a benchmark: a 124M model in two libraries",
    "python benchmarks/prepare_data.py": "a benchmark: a corpus repeated 30 times",
    "python benchmarks/load_pretrained_rss.py": "a benchmark: writes and loads a 124M checkpoint",
    "lmlab recipe run ": "a recipe trains each of its arms for minutes",
    "lmlab serve": "a server runs until stopped (SERVED_BLOCKS run the examples against one)",
    "python benchmarks/serve_load.py": "a benchmark: a 124M model under load",
    "python benchmarks/gpu_train.py": "a GPU benchmark: GPT-2 124M (tests/test_benchmark_gpu_train.py runs it tiny)",
    "python benchmarks/gpu_decode.py": "a GPU benchmark: 124M and 1.1B models (tests/test_benchmark_gpu_decode.py runs them tiny)",
    "torchrun --standalone --nproc_per_node 8": "eight processes of the nanoGPT preset",
    "torchrun --nnodes=2": "needs two machines",
}
# Blocks (their first line) that talk to a server: each runs while `lmlab serve` of this model
# listens on a free loopback port, which replaces the README's address (README_SERVER) in it.
README_SERVER = "http://127.0.0.1:8000"
SERVED_BLOCKS = {
    f"curl -s {README_SERVER}/v1/completions -H \"Content-Type: application/json\" \\": "path/to/chat-model",
    "from openai import OpenAI": "path/to/chat-model",
}
# Commands (their first words) that need this many CUDA GPUs: with fewer, they run as ``--help`` only.
GPU_COMMANDS = {
    "lmlab train --preset nanogpt-cpu --device cuda ": 1,
    "lmlab train --device cuda:1 ": 2,
    "lmlab generate runs/nano --device cuda ": 1,
}
# What commands (their first words) that read their input from the terminal get on stdin.
STDIN = {"lmlab chat runs/assistant ": "w1 w2\nw3\n"}
# Python blocks' budgets: text of the README → what the test runs instead.
PYTHON_BUDGETS = {
    'apply_overrides(config, ["train.max_steps=500"])':
        f'apply_overrides(config, ["train.max_steps=2", *{TINY_MODEL!r}])',
    'epochs=3, lr=3e-5, batch_size=16))': 'max_steps=2, lr=3e-5, batch_size=16))',
    'lora_rank=8, lora_alpha=16, lora_targets="q,k,v,o"))':
        'lora_rank=8, lora_alpha=16, lora_targets="q,k,v,o", max_steps=2))',
}


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int


def readme_blocks() -> list[Block]:
    """The README's ```bash and ```python blocks, in order."""
    text = README.read_text(encoding="utf-8")
    return [Block(match.group(1), match.group(2), text.count("\n", 0, match.start()) + 2)
            for match in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.M | re.S)]


def bash_commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, trailing comments dropped."""
    joined = code.replace("\\\n", " ")
    commands = [re.sub(r"\s{2,}#\s.*$", "", line).strip() for line in joined.splitlines()]
    return [command for command in commands if command]


def runnable(command: str) -> str:
    """``command`` as the test runs it: ``lmlab`` and ``python`` through this tree's Python, tiny
    training budgets, ``--help`` (of its first two words: the program) for what :data:`HELP_ONLY` names."""
    python = shlex.quote(sys.executable)
    if any(command.startswith(prefix) for prefix in HELP_ONLY) or any(
            command.startswith(prefix) and cuda_devices() < count for prefix, count in GPU_COMMANDS.items()):
        command = " ".join(command.split()[:2]).replace("benchmarks/", f"{ROOT}/benchmarks/") + " --help"
    elif command.split()[:2] in (["lmlab", "train"], ["lmlab", "compare"]):
        command += " " + " ".join(shlex.quote(word) for word in TINY_BUDGET)
    elif command.split()[:2] == ["lmlab", "finetune"]:
        command += " " + " ".join(FINETUNE_BUDGET)
    command = re.sub(r"^python ", f"{python} ", command)
    return re.sub(r"(^|\|\s*)lmlab ", rf"\1{python} -m lmlab.cli ", command)


@contextmanager
def served(sandbox: Path, model: str | None):
    """The address of ``lmlab serve model`` on a free loopback port while the block runs (None: no server)."""
    if model is None:
        yield None
        return
    process = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "serve", model, "--port", "0"], cwd=sandbox,
                               env=sandbox_env(sandbox), stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        found = re.search(r" at (http://127\.0\.0\.1:\d+)", line)
        assert found, line + process.stderr.read()
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=HANG_GUARD_S)


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def stdin_of(command: str) -> str:
    """What ``command`` reads on stdin: :data:`STDIN`'s text for it, else nothing."""
    return next((text for prefix, text in STDIN.items() if command.startswith(prefix)), "")


def run_in(sandbox: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=sandbox, env=sandbox_env(sandbox), input=stdin, text=True,
                          capture_output=True, timeout=HANG_GUARD_S)


def sandbox_env(sandbox: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LMLAB_CACHE": str(sandbox / "cache"),
            "HF_HOME": str(sandbox / "hf"), "HF_HUB_CACHE": str(sandbox / "hf" / "hub"), "HF_HUB_OFFLINE": "1"}


# ------------------------------------------------------------------------------- the sandbox
def _write_fixtures(sandbox: Path) -> None:
    """The files the README's blocks name."""
    text = EXCERPT.read_text(encoding="utf-8")
    (sandbox / "cache").mkdir()
    (sandbox / "cache" / "shakespeare.txt").write_text(text, encoding="utf-8")
    for name in ("tinyshakespeare.txt", "corpus.txt", "other-text.txt"):
        (sandbox / name).write_text(text, encoding="utf-8")
    (sandbox / "more").mkdir()
    (sandbox / "more" / "sonnets.txt").write_text(text[:20_000], encoding="utf-8")
    (sandbox / "prompts.txt").write_text("ROMEO:\nThe meaning of life is\n", encoding="utf-8")
    (sandbox / "turns.txt").write_text("w1 w2\nw3\n", encoding="utf-8")
    (sandbox / "texts.txt").write_text("w1 w2\nw3 w4\n", encoding="utf-8")
    (sandbox / "my-run.yaml").write_text("model:\n  n_layer: 2\n  bias: true\ntrain:\n  lr: 2.0e-3\n", encoding="utf-8")
    (sandbox / "train.tsv").write_text("en\tde\nhello\thallo\ngood morning\tguten Morgen\n", encoding="utf-8")
    (sandbox / "reviews.csv").write_text("text,label\ngreat play,good\ndull play,bad\n", encoding="utf-8")
    _write_task_data(sandbox)
    zstandard = pytest.importorskip("zstandard")
    pgn = '[Event "a"]\n[Result "1-0"]\n\n1. e4 e5 2. Qh5 Nc6 3. Bc4 Nf6 4. Qxf7# 1-0\n'
    (sandbox / "games.pgn.zst").write_bytes(zstandard.ZstdCompressor().compress(pgn.encode()))


REVIEWS = [("a fine film", "good"), ("a great play", "good"), ("a dull film", "bad"), ("a long dull play", "bad"),
           ("the film is great", "good"), ("the play is dull", "bad"), ("a great story", "good"), ("a bad film", "bad")]
ARTICLES = [("the world is everything that is the case .", "the world is the case"),
            ("the world is the totality of facts , not of things .", "the world is facts"),
            ("what is the case , the fact , is the existence of states of affairs .", "the fact is the case"),
            ("a long article of a fine film and a great play .", "a fine film")]


def _write_task_data(sandbox: Path) -> None:
    """The fine-tuning data: labelled reviews, source/target pairs, documents and chat conversations."""
    def csv_rows(rows):
        return "text,label\n" + "".join(f"{text},{label}\n" for text, label in rows)

    (sandbox / "train.csv").write_text(csv_rows(REVIEWS), encoding="utf-8")
    (sandbox / "val.csv").write_text(csv_rows(REVIEWS[:4]), encoding="utf-8")
    (sandbox / "test.csv").write_text(csv_rows(REVIEWS[4:]), encoding="utf-8")
    (sandbox / "reviews.txt").write_text("".join(text + "\n" for text, _ in REVIEWS[:3]), encoding="utf-8")
    pairs = [{"source": source, "target": target} for source, target in ARTICLES * 2]
    (sandbox / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs), encoding="utf-8")
    (sandbox / "my-texts").mkdir()
    for index, (source, _) in enumerate(ARTICLES):
        (sandbox / "my-texts" / f"doc{index}.txt").write_text(f"{source} w1 w2 w{index + 3}\n", encoding="utf-8")
    conversations = [{"messages": [{"role": "user", "content": f"w{i} w{i + 1}"},
                                   {"role": "assistant", "content": f"w{i + 2} w{i + 3}"}]} for i in range(6)]
    (sandbox / "conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations),
                                                 encoding="utf-8")


def _write_models(sandbox: Path) -> None:
    """A GPT-2-shaped HF directory (``gpt2-dir``, ``path/to/hf-model``, ``path/to/gpt2``), a chat model
    (``path/to/chat-model``, ``path/to/llama`` and the Hub id ``org/chat-model`` in an offline Hub cache), a
    sentence encoder, masked-LM BERT and RoBERTa models and a T5."""
    from tiny_models import bert_mlm_dir, chat_model_dir, roberta_mlm_dir, sentence_encoder_dir, t5_dir

    python = sys.executable
    train = run_in(sandbox, python, "-m", "lmlab.cli", "train", "--data", "corpus.txt", "--out", "fixture-run",
                   *TINY_BUDGET, "model.bias=true", "model.context_length=128")
    assert train.returncode == 0, train.stderr
    export = run_in(sandbox, python, "-m", "lmlab.cli", "convert", "fixture-run", "gpt2-dir", "--to", "hf")
    assert export.returncode == 0, export.stderr
    (sandbox / "path" / "to").mkdir(parents=True)
    shutil.copytree(sandbox / "gpt2-dir", sandbox / "path" / "to" / "hf-model")
    shutil.copytree(sandbox / "gpt2-dir", sandbox / "path" / "to" / "gpt2")
    chat_model_dir(sandbox / "path" / "to" / "chat-model")
    shutil.copytree(sandbox / "path" / "to" / "chat-model", sandbox / "path" / "to" / "llama")
    snapshot = sandbox / "hf" / "hub" / "models--org--chat-model" / "snapshots" / HUB_COMMIT
    shutil.copytree(sandbox / "path" / "to" / "chat-model", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(HUB_COMMIT)
    sentence_encoder_dir(sandbox / "path" / "to" / "sentence-transformer")
    bert_mlm_dir(sandbox / "path" / "to" / "bert")
    roberta_mlm_dir(sandbox / "path" / "to" / "roberta")
    t5_dir(sandbox / "path" / "to" / "t5")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("readme")
    _write_fixtures(folder)
    _write_models(folder)
    return folder


# ------------------------------------------------------------------------------- the checks
BLOCKS = readme_blocks()


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"line {b.line} ({b.language})" for b in BLOCKS])
def test_readme_block_runs_as_pasted(sandbox, block):
    first_line = block.code.splitlines()[0]
    if first_line in NETWORK_BLOCKS:
        pytest.skip(NETWORK_BLOCKS[first_line])
    with served(sandbox, SERVED_BLOCKS.get(first_line)) as url:
        code = block.code.replace(README_SERVER, url) if url else block.code
        if block.language == "python":
            _run_python_block(sandbox, block, code)
        else:
            _run_bash_block(sandbox, block, code)


def _run_python_block(sandbox: Path, block: Block, code: str) -> None:
    for text, budget in PYTHON_BUDGETS.items():
        code = code.replace(text, budget)
    result = run_in(sandbox, sys.executable, "-", stdin=code)
    assert result.returncode == 0, f"README line {block.line}:\n{result.stderr[-3000:]}"


def _run_bash_block(sandbox: Path, block: Block, code: str) -> None:
    for command in bash_commands(code):
        result = subprocess.run(["bash", "-o", "pipefail", "-c", runnable(command)], cwd=sandbox,
                                env=sandbox_env(sandbox), input=stdin_of(command), capture_output=True, text=True,
                                timeout=HANG_GUARD_S)
        assert result.returncode == 0, f"README line {block.line}: {command}\n{result.stderr[-3000:]}"


def test_every_exemption_and_budget_names_readme_text():
    """An exemption or a budget whose README text is gone would silently stop covering it."""
    text = README.read_text(encoding="utf-8")
    first_lines = {block.code.splitlines()[0] for block in BLOCKS}
    assert set(NETWORK_BLOCKS) <= first_lines and set(SERVED_BLOCKS) <= first_lines
    commands = [command for block in BLOCKS if block.language == "bash" for command in bash_commands(block.code)]
    assert all(any(command.startswith(prefix) for command in commands) for prefix in HELP_ONLY)
    assert all(budgeted in text for budgeted in PYTHON_BUDGETS)
    assert all(any(command.startswith(prefix) for command in commands) for prefix in [*GPU_COMMANDS, *STDIN])


@pytest.mark.slow
def test_the_alternatives_table_header_is_the_one_the_readme_shows(sandbox):
    shown = re.search(r"headed `(\| Input \|[^`]*)` for N=(\d+)", README.read_text(encoding="utf-8"))
    assert shown, "the README describes the --show-alternatives table"
    header, n = shown.groups()
    result = run_in(sandbox, sys.executable, "-m", "lmlab.cli", "generate", "gpt2-dir", "--prompt", "The",
                    "--show-alternatives", n, "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == header
