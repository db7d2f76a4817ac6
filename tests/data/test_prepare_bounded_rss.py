"""A corpus larger than a memory budget is sharded, then trained on, with bounded memory.

Each phase runs in a fresh Python process so its peak RSS (``ru_maxrss``) is its own: a baseline
child that only imports and loads the tokenizer, a child that prepares shards from a synthetic
text file bigger than the budget, and a child that trains a tiny model on random windows of the
memory-mapped shards and reports its anonymous RSS (file-backed memmap pages excluded) before and
after many steps.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.tokenizers import train_tokenizer

FILE_MB = 60
BUDGET_FRACTION = 0.5  # the prepare step may grow by at most this fraction of the file size
TRAIN_GROWTH_MB = 16  # anonymous memory may grow by at most this much over the training steps
HANG_GUARD_S = 3600  # only catches a hung child; a loaded machine may take as long as it needs
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()

SETUP = """
import json, resource, sys
from pathlib import Path
from lmlab.data.shards import ShardedTokens, prepare_shards
from lmlab.tokenizers import load_tokenizer
tokenizer = load_tokenizer(sys.argv[1])

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def anon_mb():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024
"""
BASELINE = SETUP + """
print(json.dumps({"peak_mb": peak_mb()}))
"""
PREPARE = SETUP + """
index = prepare_shards(tokenizer, sys.argv[2], sys.argv[3], shard_tokens=1 << 22)
print(json.dumps({"peak_mb": peak_mb(), "tokens": index.total_tokens, "shards": len(index.shards)}))
"""
TRAIN = SETUP + """
import torch
from lmlab.data.windows import random_windows
from lmlab.objectives import causal_lm_batch, token_cross_entropy
tokens = ShardedTokens.open(sys.argv[3])
vocab = tokens.index.vocab_size
model = torch.nn.Sequential(torch.nn.Embedding(vocab, 16), torch.nn.Linear(16, vocab))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
generator = torch.Generator().manual_seed(0)

def train(steps):
    for _ in range(steps):
        batch = causal_lm_batch(random_windows(tokens, 16, 64, generator))
        loss = token_cross_entropy(model(batch.input_ids), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()

first_loss = train(20)
warm = anon_mb()
last_loss = train(400)
print(json.dumps({"warm_mb": warm, "after_mb": anon_mb(), "first_loss": first_loss,
                  "last_loss": last_loss}))
"""


def write_synthetic_text(path: Path, megabytes: int) -> int:
    """Write ``megabytes`` MB of random word lines in 1 MB chunks; returns the size in bytes."""
    rng = random.Random(0)
    blocks = []
    for _ in range(4):
        lines = (" ".join(rng.choices(WORDS, k=rng.randint(3, 15))) for _ in range(20_000))
        blocks.append(("\n".join(lines) + "\n").encode()[: 1 << 20])
    with open(path, "wb") as out:
        for i in range(megabytes):
            out.write(blocks[i % len(blocks)])
    return path.stat().st_size


def run_child(code: str, *args: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/status").is_file() or sys.platform != "linux",
    reason="reads RSS from /proc (Linux)",
)
def test_corpus_larger_than_the_budget_prepares_and_trains_with_bounded_rss(tmp_path):
    tokenizer = train_tokenizer("bpe", iter([" ".join(WORDS * 20)]), 300)
    tokenizer.save(tmp_path / "tok")
    corpus = tmp_path / "corpus.txt"
    size_mb = write_synthetic_text(corpus, FILE_MB) / 2**20

    baseline = run_child(BASELINE, tmp_path / "tok")
    prepared = run_child(PREPARE, tmp_path / "tok", corpus, tmp_path / "shards")
    growth = prepared["peak_mb"] - baseline["peak_mb"]
    assert growth < BUDGET_FRACTION * size_mb, (
        f"preparing a {size_mb:.0f} MB file raised peak RSS by {growth:.0f} MB"
    )
    assert prepared["tokens"] > 0 and prepared["shards"] > 1

    trained = run_child(TRAIN, tmp_path / "tok", corpus, tmp_path / "shards")
    assert trained["after_mb"] - trained["warm_mb"] < TRAIN_GROWTH_MB
    assert trained["last_loss"] < trained["first_loss"]
