"""``lmlab train --nproc``'s launcher ends as the training processes ended: their exit code, no
torchrun traceback; a torchrun that cannot start is one ``lmlab: error:`` line and exit 2."""

from __future__ import annotations

import pytest
import torch.distributed.run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from lmlab.training.launch import launch

ARGS = ["--standalone", "--nproc_per_node", "2", "-m", "lmlab", "train"]


def failing_with(*exitcodes: int):
    def run(options):
        failures = {rank: ProcessFailure(rank, 1000 + rank, code, "/nonexistent/error.json")
                    for rank, code in enumerate(exitcodes)}
        raise ChildFailedError("lmlab", failures)
    return run


@pytest.mark.parametrize(("exitcodes", "expected"), [((2, 2), 2), ((-9,), 137), ((1,), 1), ((130, 2), 130)])
def test_the_first_failed_process_gives_the_exit_code(monkeypatch, capsys, exitcodes, expected):
    monkeypatch.setattr(torchrun, "run", failing_with(*exitcodes))
    assert launch(ARGS) == expected
    assert "Traceback" not in capsys.readouterr().err


def test_a_launcher_that_cannot_start_is_one_line_and_exit_2(monkeypatch, capsys):
    def run(options):
        raise RuntimeError("The server socket has failed to listen on any local network address.\nmore detail")
    monkeypatch.setattr(torchrun, "run", run)
    assert launch(ARGS) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("lmlab: error: torchrun could not start the training processes (The server socket")


def test_processes_that_end_well_end_the_launcher_well(monkeypatch):
    started = []
    monkeypatch.setattr(torchrun, "run", lambda options: started.append(options.nproc_per_node))
    assert launch(ARGS) == 0 and started == ["2"]
