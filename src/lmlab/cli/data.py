"""``lmlab tokenizer train|encode|decode`` and ``lmlab data prepare``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmlab.cli.common import positive
from lmlab.errors import LmlabError

# ----------------------------------------------------------------------------------- tokenizer
_ENCODE_BATCH_LINES = 1024
TOKENIZER_HELP = ("a built-in name (chess-pgn), a saved tokenizer directory, a Hugging Face model directory, "
                  "tokenizer file (tokenizer.json, vocab.txt, vocab.json, *.model) or Hub id, or a .gguf file")


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from lmlab.data.corpora import load_corpus
    from lmlab.tokenizers import train_tokenizer
    from lmlab.tokenizers.hf import HF_TOKENIZER_FILE

    data = Path(args.data).expanduser()
    texts = [data] if data.is_file() else iter(load_corpus(args.data).splitlines(keepends=True))
    tokenizer = train_tokenizer(args.kind, texts, args.vocab_size, min_frequency=args.min_frequency)
    out = Path(args.out)
    tokenizer.save(out)
    tokenizer.backend.save(str(out / HF_TOKENIZER_FILE))
    print(json.dumps({"out": str(out), "kind": args.kind, "vocab_size": tokenizer.vocab_size}))
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from itertools import islice

    from lmlab.interop.hub import resolve_tokenizer

    tokenizer = resolve_tokenizer(args.tokenizer)
    while lines := list(islice(sys.stdin, _ENCODE_BATCH_LINES)):
        texts = [line.removesuffix("\n").removesuffix("\r") for line in lines]
        for ids in tokenizer.encode_batch(texts):
            print(" ".join(map(str, ids)))
    return 0


def cmd_tokenizer_decode(args: argparse.Namespace) -> int:
    from lmlab.interop.hub import resolve_tokenizer

    tokenizer = resolve_tokenizer(args.tokenizer)
    for number, line in enumerate(sys.stdin, start=1):
        print(tokenizer.decode(_parse_ids(line, number)))
    return 0


def _parse_ids(line: str, number: int) -> list[int]:
    try:
        return [int(word) for word in line.split()]
    except ValueError:
        raise LmlabError(
            f"stdin line {number} is not space-separated integer ids: {line.strip()[:60]!r}"
        ) from None


# ----------------------------------------------------------------------------------- data
def cmd_data_prepare(args: argparse.Namespace) -> int:
    import time

    from lmlab.data.shards import prepare_shards
    from lmlab.interop.hub import resolve_tokenizer

    tokenizer = resolve_tokenizer(args.tokenizer)
    sizes = {} if args.shard_tokens is None else {"shard_tokens": positive(args.shard_tokens, "--shard-tokens")}
    start = time.perf_counter()
    index = prepare_shards(
        tokenizer, args.data[0] if len(args.data) == 1 else args.data, args.out,
        doc_separator=None if args.separator == "none" else args.separator,
        documents=args.documents, **sizes,
    )
    seconds = time.perf_counter() - start
    print(json.dumps({
        "out": str(args.out), "tokens": index.total_tokens, "shards": len(index.shards),
        "documents": index.documents, "dtype": index.dtype, "seconds": round(seconds, 3),
        "mb_per_s": round(index.source_bytes / 1e6 / seconds, 3),
    }))
    return 0


# ----------------------------------------------------------------------------------- parsers
# The nested subcommand parsers are of the same class as their parent (lmlab.cli._Parser).
def add_tokenizer_parser(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train a tokenizer, or encode/decode text with one")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, parser_class=type(tok))
    train = tok_sub.add_parser("train", help="train a byte-level BPE or WordPiece tokenizer")
    train.add_argument("--kind", choices=("bpe", "wordpiece"), default="bpe")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--data", required=True,
                       help="a text file, a directory or glob, or a corpus name (tinyshakespeare)")
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--out", required=True, help="directory for lmlab-tokenizer.json and tokenizer.json")
    train.set_defaults(func=cmd_tokenizer_train)
    for name, func, what in (("encode", cmd_tokenizer_encode, "text lines → space-separated ids"),
                             ("decode", cmd_tokenizer_decode, "space-separated ids → text lines")):
        command = tok_sub.add_parser(name, help=f"stdin → stdout: {what}")
        command.add_argument("--tokenizer", required=True,
                             help=TOKENIZER_HELP)
        command.set_defaults(func=func)


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare training data")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=type(data))
    prepare = data_sub.add_parser("prepare", help="tokenize a corpus into memory-mapped token shards")
    prepare.add_argument("--tokenizer", required=True,
                         help=TOKENIZER_HELP)
    prepare.add_argument("--data", required=True, nargs="+",
                         help="text or .pgn/.pgn.zst files, a directory, a glob, or a corpus name")
    prepare.add_argument("--out", required=True, help="directory for index.json and the shards")
    prepare.add_argument("--shard-tokens", type=int, help="tokens per shard file (default 2^24)")
    prepare.add_argument("--documents", choices=("file", "line"), default="file",
                         help="what one document is: a whole file, or each non-blank line")
    prepare.add_argument("--separator", choices=("eos", "none"), default="eos",
                         help="token written between documents (default: the tokenizer's eos)")
    prepare.set_defaults(func=cmd_data_prepare)
