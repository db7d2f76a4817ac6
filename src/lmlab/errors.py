"""The one exception type that reaches users.

Every mistake a user can make (a bad config value, a missing file, a corrupt checkpoint, an
impossible decoding setting) raises :class:`LmlabError` with a single line saying what is wrong
and how to fix it. The CLI prints that line and exits with code 2. This module imports nothing
from lmlab, so every package may use it.
"""


class LmlabError(Exception):
    """A user-facing error whose message is one line: what is wrong and how to fix it."""
