"""Fault-injection matrix: each case asserts the exit status, the summary and zero survivors.

Survivors are found independently of the launcher: every process of a launch inherits a
unique ``HPCLAUNCH_TEST_MARK`` from the test, and /proc is scanned for it afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    WORKER,
    Fifo,
    launcher_cmd,
    marked_env,
    processes_with_mark,
    signal_and_await_ack,
    start_launcher,
    wait_no_marked,
)

SH = "/bin/sh"


def sh_launch(
    script: str, *flags: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        launcher_cmd(*flags, "--no_local_rank", "--no_python", SH, "-c", script),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


LAUNCH_MANY = str(Path(__file__).with_name("launch_many.py"))


def launch_many(launches: list[list[str]], env: dict[str, str], parallel: int = 4) -> list[Any]:
    """Each argument list run as its own launcher process (forked from one warm interpreter,
    see launch_many.py); their exit statuses and stderr, in order."""
    done = subprocess.run(
        [sys.executable, LAUNCH_MANY, str(parallel)], input=json.dumps(launches),
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results: list[Any] = json.loads(done.stdout)
    assert len(results) == len(launches)
    return results


def test_every_exit_code_1_to_255_is_the_launchers(mark: str) -> None:
    codes = list(range(1, 256))
    launches = [["--quiet", "--no_local_rank", "--no_python", SH, "-c", f"exit {code}"]
                for code in codes]
    results = launch_many(launches, marked_env(mark))
    for code, result in zip(codes, results):
        assert result["status"] == code, (code, result)
        assert f"exited with code {code}" in result["stderr"], (code, result)
    assert processes_with_mark(mark) == []


def test_launch_many_reports_a_launcher_s_real_exit(mark: str) -> None:
    """The helper's statuses are the launcher's own: the same launches as separate
    ``python -m hpclaunch`` processes exit the same way (exit code, signal, usage error)."""
    launches = [
        ["--quiet", "--no_local_rank", "--no_python", SH, "-c", "exit 7"],
        ["--quiet", "--no_local_rank", "--no_python", SH, "-c", "kill -TERM $$"],
        ["--nproc_per_node", "0", SH],
    ]
    env = marked_env(mark)
    forked = [result["status"] for result in launch_many(launches, env)]
    separate = [subprocess.run(launcher_cmd(*argv), capture_output=True, env=env,
                               timeout=60).returncode for argv in launches]
    assert forked == separate == [7, 128 + signal.SIGTERM, 2]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGTERM])
def test_worker_killed_by_a_signal(sig: int, mark: str) -> None:
    proc = sh_launch(f"kill -{int(sig)} $$", "--quiet", env=marked_env(mark))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert f"was killed by {signal.Signals(sig).name}".encode() in err
    assert processes_with_mark(mark) == []


@pytest.mark.parametrize("logs", [False, True])
def test_worker_that_closes_stdout(logs: bool, tmp_path: Path) -> None:
    flags = ("--enable_each_rank_log", str(tmp_path)) if logs else ()
    proc = sh_launch("exec >&-; echo still here >&2; exit 0", "--nproc_per_node", "2", *flags)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    if logs:
        assert all("still here" in p.read_text() for p in tmp_path.glob("*.log"))
    else:
        assert err.count(b"still here") == 2


@pytest.mark.parametrize("logs", [False, True])
def test_a_100_mb_flood_arrives_whole(logs: bool, tmp_path: Path) -> None:
    flood = tmp_path / "flood.py"
    flood.write_text("import sys\nsys.stdout.buffer.write((b'x' * 99 + b'\\n') * 1_000_000)\n")
    out_path = tmp_path / "launcher.out"
    log_dir = tmp_path / "logs"
    flags = ["--enable_each_rank_log", str(log_dir)] if logs else []
    with open(out_path, "wb") as out:
        proc = subprocess.run(
            launcher_cmd("--nproc_per_node", "2", *flags, "--no_local_rank", str(flood)),
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr
    if logs:
        sizes = sorted(p.stat().st_size for p in log_dir.glob("*.log"))
        assert sizes == [100_000_000, 100_000_000]
    else:
        with open(out_path, "rb") as handle:
            counts = {b"[rank0]: ": 0, b"[rank1]: ": 0}
            for line in handle:
                assert len(line) == 109 and line.endswith(b"x" * 99 + b"\n"), line[:40]
                counts[line[:9]] += 1
        assert counts == {b"[rank0]: ": 1_000_000, b"[rank1]: ": 1_000_000}


def test_sigterm_while_spawning_many_workers(mark: str, tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "f")
    proc = start_launcher(
        "--nproc_per_node", "64", WORKER, "--ready", fifo.path, "--hang", env=marked_env(mark)
    )
    fifo.expect(1)  # the first worker runs; the launcher is most likely still spawning
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    fifo.close()
    assert proc.returncode == 128 + signal.SIGTERM
    assert wait_no_marked(mark) == []


def test_sigterm_twice_during_teardown(mark: str, fifo: Fifo) -> None:
    proc = start_launcher(
        "--nproc_per_node",
        "2",
        "--kill_timeout",
        "600",
        WORKER,
        "--ready",
        fifo.path,
        "--hang",
        "--ignore-term",
        "--children",
        "3",
        env=marked_env(mark),
    )
    fifo.expect(2)
    signal_and_await_ack(proc, signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert processes_with_mark(mark) == []


@pytest.mark.parametrize("phase", ["spawning", "running", "teardown"])
def test_kill_9_of_the_launcher_in_each_phase(phase: str, mark: str, fifo: Fifo) -> None:
    workers = "64" if phase == "spawning" else "2"
    proc = start_launcher(
        "--nproc_per_node",
        workers,
        "--kill_timeout",
        "600",
        WORKER,
        "--ready",
        fifo.path,
        "--hang",
        "--ignore-term",
        "--daemon",
        "--children",
        "2",
        env=marked_env(mark),
    )
    fifo.expect(1 if phase == "spawning" else 4)
    if phase == "teardown":
        signal_and_await_ack(proc, signal.SIGTERM)
    proc.kill()
    proc.communicate(timeout=60)
    assert wait_no_marked(mark) == []


def test_a_worker_that_forks_100_children(mark: str, fifo: Fifo) -> None:
    proc = start_launcher(
        "--nproc_per_node",
        "2",
        WORKER,
        "--ready",
        fifo.path,
        "--hang",
        "--children",
        "100",
        "--wait-go",
        "--exit-rank",
        "1",
        "--code",
        "5",
        env=marked_env(mark),
    )
    lines = fifo.expect(2)
    assert len(processes_with_mark(mark)) >= 202
    pid = next(int(line.split()[2]) for line in lines if line.startswith("worker 1 "))
    os.kill(pid, signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5
    assert "rank 1" in err
    assert processes_with_mark(mark) == []


def test_256_trivial_workers(mark: str) -> None:
    result = subprocess.run(
        launcher_cmd("--nproc_per_node", "256", "--no_local_rank", "--no_python", "/bin/true"),
        capture_output=True,
        env=marked_env(mark),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert processes_with_mark(mark) == []


def test_256_sleeping_workers_start_and_stop_without_fd_leaks(mark: str, fifo: Fifo) -> None:
    proc = start_launcher(
        "--nproc_per_node", "256", WORKER, "--ready", fifo.path, "--hang", env=marked_env(mark)
    )
    fifo.expect(256, timeout=300)
    fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    # Two console pipes and one stack-dump pipe per worker, and a handful of its own.
    assert fds <= 3 * 256 + 16
    zombies = [
        p
        for p in processes_with_mark(mark)
        if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    ]
    assert zombies == []
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert processes_with_mark(mark) == []


def test_500_back_to_back_launches_leave_nothing(mark: str, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = marked_env(mark, TMPDIR=str(tmp))
    launches = [
        ["--quiet", "--save_pid", str(100000 + i), "--no_local_rank", "--no_python", "/bin/true"]
        for i in range(500)
    ]
    for result in launch_many(launches, env):
        assert result["status"] == 0, result["stderr"]
    assert os.listdir(tmp) == []
    assert processes_with_mark(mark) == []
