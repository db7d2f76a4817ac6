"""What every subcommand shares: exit codes, one-line stderr messages, flag checks."""

from __future__ import annotations

import argparse
import re
import sys

from lmlab.errors import LmlabError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader left


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def positive(value, flag: str):
    if not value > 0:
        raise LmlabError(f"{flag} must be positive, got {value}")
    return value


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPE = re.compile(r"\\(.?)", re.DOTALL)


def unescaped(text: str) -> str:
    """An argparse type: ``text`` with the escapes ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` turned into
    the characters they name (a shell passes ``"\\n\\n"`` as backslash-n twice); another escape is
    a usage error."""

    def character(match: re.Match) -> str:
        if match.group(1) not in ESCAPES:
            raise argparse.ArgumentTypeError(
                f"unknown escape {match.group()!r} in {text!r}; use \\n, \\t, \\r or \\\\ (a backslash)"
            )
        return ESCAPES[match.group(1)]

    return _ESCAPE.sub(character, text)
