import time, sys, os, tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice, chain
from pathlib import Path
import numpy as np
from lmlab.data import shards
from lmlab.tokenizers import train_tokenizer

seq = shards._encode_into

def _write_batch(writer, batch, future, separator, documents):
    parts = []
    for ids, (_, starts) in zip(future.result(), batch):
        if starts:
            if separator is not None and documents > 0:
                parts.append((separator,))
            documents += 1
        parts.append(ids)
    writer.write(np.fromiter(chain.from_iterable(parts), dtype=np.int64))
    return documents

def piped(writer, tokenizer, pieces, separator, batch_docs):
    documents = 0
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = deque()
        for batch in iter(lambda: list(islice(pieces, batch_docs)), []):
            pending.append((batch, worker.submit(tokenizer.encode_batch, [t for t, _ in batch])))
            if len(pending) > 1:
                documents = _write_batch(writer, *pending.popleft(), separator, documents)
        while pending:
            documents = _write_batch(writer, *pending.popleft(), separator, documents)
    return documents

tok = train_tokenizer("bpe", "/work/shared/data/tinyshakespeare.txt" if os.path.exists("/work/shared/data/tinyshakespeare.txt") else sys.argv[1], 4096)
src = Path(sys.argv[1]).read_bytes()
tmp = Path(tempfile.mkdtemp())
big = tmp / "big.txt"
big.write_bytes(src * int(sys.argv[2]))
mb = big.stat().st_size / 1e6
for bd in (64, 256, 1024):
    for name, f in (("seq", seq), ("piped", piped)):
        shards._encode_into = f
        t0 = time.perf_counter()
        idx = shards.prepare_shards(tok, [big], tmp / "sh", batch_docs=bd, doc_separator=None)
        dt = time.perf_counter() - t0
        print(name, bd, round(mb / dt, 2), "MB/s", idx.total_tokens, flush=True)
t0 = time.perf_counter()
n = 0
with open(big, encoding="utf-8", newline="") as h:
    for line in h:
        n += len(tok.encode(line))
print("naive", round(mb / (time.perf_counter() - t0), 2), n)
