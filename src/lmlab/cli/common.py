"""What every subcommand shares: exit codes, one-line stderr messages, flag checks."""

from __future__ import annotations

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
