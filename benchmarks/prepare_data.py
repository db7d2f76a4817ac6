"""Tokenising a corpus into shards vs a naive per-line ``tokenizer.encode`` loop.

Builds a large text (``--data`` repeated ``--repeat`` times in a temporary file), trains a
byte-level BPE tokenizer of 4096 ids on ``--data`` (or loads ``--tokenizer``), then times
``prepare_shards`` (streamed, batched, parallel ``encode_batch``, written to uint16 shards) and
the peer: one ``tokenizer.encode`` call per line on one thread, ids appended to an array. Both
read the same file. The token counts can differ slightly: the shards encode runs of whole lines
as one text, so whitespace spanning a line break may merge differently. Prints one JSON line::

    python benchmarks/prepare_data.py --data ../shared/data/tinyshakespeare.txt --repeat 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from array import array
from pathlib import Path

from lmlab.data.shards import DEFAULT_BATCH_DOCS, prepare_shards
from lmlab.tokenizers import Tokenizer, load_pretrained_tokenizer, train_tokenizer

VOCAB_SIZE = 4096


def build_text(source: Path, repeat: int, dest: Path) -> int:
    """Write ``source`` ``repeat`` times into ``dest``; returns its size in bytes."""
    data = source.read_bytes()
    with open(dest, "wb") as out:
        for _ in range(repeat):
            out.write(data)
    return dest.stat().st_size


def time_shards(tokenizer: Tokenizer, text: Path, out: Path, batch_docs: int) -> tuple[float, int]:
    """Seconds to prepare shards from ``text``, and the tokens written (one file: no EOS)."""
    start = time.perf_counter()
    index = prepare_shards(tokenizer, [text], out, batch_docs=batch_docs, doc_separator=None)
    return time.perf_counter() - start, index.total_tokens


def time_naive(tokenizer: Tokenizer, text: Path) -> tuple[float, int]:
    """Seconds for the per-line ``encode`` loop over ``text``, and the tokens it produced."""
    start = time.perf_counter()
    ids = array("H" if tokenizer.vocab_size <= 65535 else "I")
    with open(text, encoding="utf-8", newline="") as handle:
        for line in handle:
            ids.extend(tokenizer.encode(line))
    return time.perf_counter() - start, len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a UTF-8 text file")
    parser.add_argument("--repeat", type=int, default=10, help="copies of --data in the big text")
    parser.add_argument("--tokenizer", help="use this tokenizer instead of training a BPE one")
    parser.add_argument("--batch-docs", type=int, default=DEFAULT_BATCH_DOCS)
    args = parser.parse_args()

    if args.tokenizer:
        tokenizer = load_pretrained_tokenizer(args.tokenizer)
    else:
        tokenizer = train_tokenizer("bpe", args.data, VOCAB_SIZE)
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as tmp:
        text = Path(tmp) / "corpus.txt"
        size = build_text(args.data, args.repeat, text)
        shard_s, shard_tokens = time_shards(tokenizer, text, Path(tmp) / "shards", args.batch_docs)
        naive_s, naive_tokens = time_naive(tokenizer, text)
    megabytes = size / 1e6
    print(json.dumps({
        "benchmark": "prepare_data", "mb": round(megabytes, 2),
        "tokens": shard_tokens, "naive_tokens": naive_tokens,
        "vocab_size": tokenizer.vocab_size, "cpus": os.cpu_count(), "batch_docs": args.batch_docs,
        "shards_mb_s": round(megabytes / shard_s, 2), "naive_mb_s": round(megabytes / naive_s, 2),
        "speedup": round(naive_s / shard_s, 2),
    }))


if __name__ == "__main__":
    main()
