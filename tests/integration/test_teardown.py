"""Failure propagation, signals and teardown, with real processes and no survivors.

Workers announce themselves (and any children or double-forked daemons they leave) on a
FIFO; the test acts only once they are all there, and afterwards checks every announced
PID is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    WORKER,
    Fifo,
    kill_all,
    pids_of,
    signal_and_await_ack,
    start_launcher,
    survivors,
    wait_gone,
    wait_until_empty,
)


def launch(
    fifo: Fifo, workers: int, *worker_flags: str, launcher_flags: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    return start_launcher(
        "--nproc_per_node",
        str(workers),
        *launcher_flags,
        WORKER,
        "--ready",
        fifo.path,
        *worker_flags,
    )


def go(lines: list[str], rank: int) -> None:
    """Release the worker of ``rank`` that waits (``--wait-go``) to fail."""
    for line in lines:
        kind, who, pid = line.split()
        if kind == "worker" and int(who) == rank:
            os.kill(int(pid), signal.SIGUSR1)
            return
    raise AssertionError(f"rank {rank} never announced itself: {lines}")


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.parametrize("code", [1, 3, 77, 255])
def test_first_failure_sets_exit_code_and_stops_the_rest(fifo: Fifo, code: int) -> None:
    proc = launch(
        fifo, 3, "--hang", "--child", "--wait-go", "--exit-rank", "1", "--code", str(code)
    )
    lines = fifo.expect(6)
    go(lines, 1)
    rc, _, err = finish(proc)
    assert rc == code
    assert "worker failed: rank 1 (local_rank 1" in err and f"exited with code {code}" in err
    assert os.uname().nodename in err
    assert survivors(pids_of(lines)) == []


def test_worker_killed_by_signal_gives_128_plus_signal(fifo: Fifo) -> None:
    proc = launch(fifo, 2, "--hang", "--wait-go", "--kill-self-rank", "0")
    go(fifo.expect(2), 0)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGKILL
    assert "rank 0" in err and "SIGKILL" in err


def test_failure_summary_has_log_path_and_tail(fifo: Fifo, tmp_path: Path) -> None:
    proc = launch(
        fifo,
        2,
        "--print",
        "last words",
        "--hang",
        "--wait-go",
        "--exit-rank",
        "1",
        "--code",
        "9",
        launcher_flags=("--enable_each_rank_log", str(tmp_path)),
    )
    go(fifo.expect(2), 1)
    rc, _, err = finish(proc)
    assert rc == 9
    log = next(tmp_path.glob("*_rank1.log"))
    assert f"log: {log}" in err
    assert "    last words from rank 1" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_fatal_signal_tears_down_whole_trees(fifo: Fifo, sig: int) -> None:
    proc = launch(fifo, 2, "--hang", "--child", "--daemon")
    lines = fifo.expect(6)
    pids = pids_of(lines)
    try:
        proc.send_signal(sig)
        rc, _, err = finish(proc)
        assert rc == 128 + sig
        assert survivors(pids) == []
    finally:
        kill_all(pids)


def test_term_ignoring_workers_and_daemons_are_killed_after_kill_timeout(fifo: Fifo) -> None:
    proc = launch(
        fifo, 2, "--hang", "--ignore-term", "--daemon", launcher_flags=("--kill_timeout", "0.5")
    )
    pids = pids_of(fifo.expect(4))
    try:
        proc.send_signal(signal.SIGTERM)
        rc, _, err = finish(proc)
        assert rc == 128 + signal.SIGTERM
        assert "outlived SIGTERM" in err  # they ignored TERM: only KILL ended them
        assert survivors(pids) == []
    finally:
        kill_all(pids)


def test_second_signal_kills_at_once(fifo: Fifo) -> None:
    proc = launch(fifo, 2, "--hang", "--ignore-term", launcher_flags=("--kill_timeout", "600"))
    pids = pids_of(fifo.expect(2))
    try:
        signal_and_await_ack(proc, signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        rc, _, err = finish(proc, timeout=30)
        assert rc == 128 + signal.SIGINT
        assert survivors(pids) == []
    finally:
        kill_all(pids)


def test_usr1_usr2_are_forwarded_and_the_launcher_keeps_running(fifo: Fifo) -> None:
    proc = launch(fifo, 2, "--record-signals")
    fifo.expect(2)
    proc.send_signal(signal.SIGUSR1)
    got = sorted(fifo.expect(2))
    assert got == ["signal 0 SIGUSR1", "signal 1 SIGUSR1"]
    assert proc.poll() is None
    proc.send_signal(signal.SIGUSR2)  # the workers exit 0 on USR2
    assert sorted(fifo.expect(2)) == ["signal 0 SIGUSR2", "signal 1 SIGUSR2"]
    rc, _, _ = finish(proc)
    assert rc == 0


def test_leftover_daemons_of_successful_workers_are_stopped(fifo: Fifo) -> None:
    proc = launch(fifo, 2, "--daemon")
    lines = fifo.expect(4)
    rc, _, err = finish(proc)
    assert rc == 0
    assert "still running: stopping them" in err
    assert survivors(pids_of(lines, "daemon")) == []


def test_kill_9_of_the_launcher_leaves_nothing(fifo: Fifo, tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = start_launcher(
        "--nproc_per_node",
        "2",
        "--save_pid",
        "4242",
        WORKER,
        "--ready",
        fifo.path,
        "--hang",
        "--ignore-term",
        "--child",
        "--daemon",
        env=env,
    )
    pids = pids_of(fifo.expect(6))
    pid_file = tmp_path / "4242.deepspeed"
    try:
        assert pid_file.read_text() == str(proc.pid)
        proc.kill()
        proc.wait()
        assert wait_gone(pids) == []  # the kernel (pdeathsig) and the watchdog do this
        # the watchdog removes it; nothing signals that, so confirm with a bounded wait
        assert wait_until_empty(lambda: [1] if pid_file.exists() else []) == []
    finally:
        kill_all(pids)


def test_pid_file_exists_while_running_and_is_removed(fifo: Fifo, tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = start_launcher(
        "--save_pid", "31337", WORKER, "--ready", fifo.path, "--record-signals", env=env
    )
    fifo.expect(1)
    pid_file = tmp_path / "31337.deepspeed"
    assert pid_file.read_text() == str(proc.pid)
    assert os.stat(pid_file).st_mode & 0o022 == 0
    proc.send_signal(signal.SIGUSR2)
    rc, _, _ = finish(proc)
    assert rc == 0
    assert not pid_file.exists()
