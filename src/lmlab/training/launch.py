"""torchrun for ``lmlab train --nproc N``: ``python -m lmlab.training.launch TORCHRUN-ARGS``.

It runs ``torch.distributed.run`` in this process and ends it as the training processes ended,
with the exit code of the first one that failed (2 for a one-line :class:`LmlabError`, which that
process has printed; 128 + the signal for one that was killed) instead of torchrun's traceback and
exit code 1. A launcher that cannot start the processes prints one ``lmlab: error:`` line and exits 2.
"""

from __future__ import annotations

import signal
import sys

from lmlab.errors import LmlabError

EXIT_USAGE = 2  # as the lmlab command's (lmlab.cli.common)
EXIT_INTERRUPTED = 128 + signal.SIGINT


def failed_exit_code(exitcode: int) -> int:
    """A shell's exit code for a process that ended with ``exitcode`` (negative: killed by a signal)."""
    return 128 - exitcode if exitcode < 0 else exitcode or 1


def launch(torchrun_args: list[str]) -> int:
    """Run torchrun with ``torchrun_args``; returns the exit code this process ends with."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    options = parse_args(torchrun_args)  # the arguments are lmlab's own: parse errors are bugs
    try:
        run(options)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failed_exit_code(failure.exitcode)
    except SignalException:  # Ctrl-C or a SIGTERM reached the launcher: it stopped the processes
        return EXIT_INTERRUPTED
    except Exception as exc:  # rendezvous, ports, spawning: torchrun could not start the processes
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        error = LmlabError(f"torchrun could not start the training processes ({reason}); "
                           "check that this machine allows local TCP connections, or start torchrun yourself")
        print(f"lmlab: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
