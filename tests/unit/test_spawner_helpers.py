"""The spawner's helpers that need no launch to be checked: the failure summary, opening the
per-rank logs, finding a process's descendants (on a real process tree this test starts)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hpclaunch.errors import SpawnError
from hpclaunch.spawner import logs, tree
from hpclaunch.spawner.report import WorkerFailure, failure_summary
from tests.conftest import Fifo, kill_all, wait_gone

# ------------------------------------------------------------------ the failure summary


def test_summary_of_an_exit_code_quotes_the_tail_and_says_where_output_went() -> None:
    failure = WorkerFailure(rank=3, local_rank=1, host="n2", pid=77, exit_code=4,
                            output_tail=tuple(f"line {i}" for i in range(30)))
    lines = failure_summary(failure, tail=5)
    assert lines[0] == "worker failed: rank 3 (local_rank 1, pid 77) on n2 exited with code 4"
    assert lines[1] == "  last 5 line(s) of its output:"
    assert lines[2:] == [f"    line {i}" for i in range(25, 30)]
    assert failure.status == 4


def test_summary_of_a_signal_names_it_and_its_status_is_128_plus() -> None:
    failure = WorkerFailure(rank=0, local_rank=0, host="h", pid=5, signal=signal.SIGSEGV)
    assert "was killed by SIGSEGV (11)" in failure_summary(failure)[0]
    assert failure.status == 128 + signal.SIGSEGV
    silent = failure_summary(failure)
    assert silent[-1] == "  its output went to this console (above)"


def test_summary_reads_the_log_and_hints_at_no_local_rank(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    log.write_text("start\nusage: train.py\ntrain.py: error: unrecognized arguments: "
                   "--local_rank=0\n")
    failure = WorkerFailure(rank=0, local_rank=0, host="h", pid=1, exit_code=2,
                            log_path=str(log), detail="why it failed")
    lines = failure_summary(failure)
    assert lines[1:4] == ["  why it failed", f"  log: {log}", "  last 3 line(s) of the log:"]
    assert lines[-1].startswith("  hint:") and "--no_local_rank" in lines[-1]


def test_a_zero_or_missing_exit_code_of_a_failure_is_still_a_failure() -> None:
    assert WorkerFailure(rank=0, local_rank=0, host="h", pid=1, exit_code=None).status == 1


# ------------------------------------------------------------------ per-rank logs


def test_logs_are_created_private_and_a_taken_name_gets_the_next_one(tmp_path: Path) -> None:
    taken = tmp_path / "20260101000000_rank0.log"
    taken.write_text("another job's log\n")
    opened = logs.open_log_files([str(taken), str(tmp_path / "sub" / "20260101000000_rank1.log")])
    try:
        assert opened[str(taken)].path == str(tmp_path / "20260101000000_rank0.1.log")
        assert taken.read_text() == "another job's log\n"  # never overwritten
        for log in opened.values():
            mode = os.fstat(log.fd).st_mode
            assert stat.S_IMODE(mode) & 0o022 == 0  # not group/world-writable
            assert os.get_inheritable(log.fd) is False
    finally:
        logs.close_all(log.fd for log in opened.values())


def test_a_planted_symlink_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    first = tmp_path / "ts_rank0.log"
    planted = tmp_path / "ts_rank1.log"
    planted.symlink_to(target)
    with pytest.raises(SpawnError, match="symlink"):
        logs.open_log_files([str(first), str(planted)])
    assert target.read_text() == "keep\n"
    assert not first.exists()  # the log made before the refusal is removed again


def test_an_unwritable_log_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpawnError, match="cannot create log directory"):
        logs.open_log_files([str(blocker / "logs" / "x_rank0.log")])


def test_tail_lines_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(b"%d\n" % i for i in range(100_000)))
    assert logs.tail_lines(str(log), 3) == ["99997", "99998", "99999"]
    assert logs.tail_lines(str(tmp_path / "missing.log")) == []


# ------------------------------------------------------------------ descendants

#: Forks a child that setsids and forks a grandchild; each reports its PID on the FIFO.
FAMILY = """
import os, sys, time
fifo = sys.argv[1]
def say(what):
    with open(fifo, "w") as f:
        f.write(f"{what} {os.getpid()}\\n")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        say("grandchild")
        time.sleep(600)
    say("child")
    time.sleep(600)
say("parent")
time.sleep(600)
"""


def test_descendants_follow_setsid_and_double_fork(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "pids.fifo")
    proc = subprocess.Popen([sys.executable, "-c", FAMILY, fifo.path])
    try:
        said = dict(line.split() for line in fifo.expect(3))
        family = {int(said["parent"]), int(said["child"]), int(said["grandchild"])}
        assert int(said["parent"]) == proc.pid
        assert set(tree.descendants(os.getpid())) >= family
        assert set(tree.descendants(proc.pid)) == family - {proc.pid}
        child = int(said["child"])
        assert tree.descendants(proc.pid, exclude={child}) == []  # excluded with its subtree
        assert tree.direct_children(proc.pid) == {child}
        assert tree.parent_of(child) == proc.pid
    finally:
        pids = sorted(tree.descendants(proc.pid)) + [proc.pid]
        kill_all(pids)
        proc.wait()
        fifo.close()
    assert wait_gone(pids) == []
