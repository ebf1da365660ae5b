"""The launcher never reports success for a job that did not run, and never stalls.

Each test is one way a real job went wrong (issue 12), run with real processes: a rank lost
to an early exit, the launcher as PID 1 of a PID namespace, too few file descriptors,
colliding per-rank log names, non-numbers for ``--kill_timeout``, a busy master port, a PID
file that is not ours to take, a full ``$TMPDIR``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

from tests.conftest import (
    WORKER,
    Fifo,
    error_line,
    launcher_cmd,
    marked_env,
    pids_of,
    processes_with_mark,
    require,
    run_launcher,
    signal_and_await_ack,
    start_launcher,
    wait_no_marked,
)

IS_ROOT = os.geteuid() == 0
#: A shell command as every worker: ``SH + ["-c", "..."]``.
SH = ["--no_local_rank", "--no_python", "/bin/sh"]


def in_pid_namespace(*args: str) -> List[str]:
    """The launcher as PID 1 of a fresh PID namespace (a container's entrypoint)."""
    require(IS_ROOT and shutil.which("unshare") is not None, "root and unshare(1)")
    return ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *launcher_cmd(*args)]


# ------------------------------------------------------------------ 1: lost ranks, exit 0


def test_a_rank_that_exits_early_leaving_a_child_does_not_end_the_job(mark: str) -> None:
    # Rank 0 exits 0 at once but leaves a sleeper: while later ranks are still being
    # started, "no worker alive and a process left" is not the end of the job.
    script = '[ "$RANK" = 0 ] && { sleep 60 & exit 0; }; echo "rank $RANK ran"'
    result = run_launcher(
        "--kill_timeout", "1", "--nproc_per_node", "32", "--no_local_rank", "--no_python",
        "/bin/sh", "-c", script, env=marked_env(mark), timeout=120,
    )
    ran = sorted(line.split()[-2] for line in result.stdout.splitlines() if line.endswith(" ran"))
    assert ran == sorted(str(rank) for rank in range(1, 32)), result.stderr
    assert result.returncode == 0, result.stderr
    assert "still running: stopping them" in result.stderr
    assert wait_no_marked(mark) == []


@pytest.mark.root
def test_as_pid_1_every_rank_runs_and_the_watchdog_is_not_a_leftover(mark: str) -> None:
    # --kill_timeout 600: counting the launcher's own watchdog as a process that outlived
    # SIGTERM would wait it out; the 60 s hang guard catches that.
    result = subprocess.run(
        in_pid_namespace("--kill_timeout", "600", "--nproc_per_node", "4", "--no_local_rank",
                         "--no_python", "/bin/echo", "hi"),
        capture_output=True, text=True, timeout=60, env=marked_env(mark),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [f"[rank{r}]: hi" for r in range(4)]
    assert "still running" not in result.stderr
    assert "outlived" not in result.stderr


@pytest.mark.root
def test_as_pid_1_adopted_orphans_are_reaped_and_stopped(mark: str, tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "f")
    proc = subprocess.Popen(
        in_pid_namespace("--kill_timeout", "600", "--nproc_per_node", "2", WORKER,
                         "--ready", fifo.path, "--daemon"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=marked_env(mark),
    )
    try:
        fifo.expect(4)  # each worker and its double-forked daemon announced themselves
        _, err = proc.communicate(timeout=60)
    finally:
        fifo.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "process(es) they started are still running" in err
    assert "outlived" not in err
    assert wait_no_marked(mark) == []


@pytest.mark.root
def test_as_pid_1_sigterm_stops_the_workers_without_waiting_for_the_watchdog(
    mark: str, tmp_path: Path
) -> None:
    fifo = Fifo(tmp_path / "f")
    proc = subprocess.Popen(
        in_pid_namespace("--kill_timeout", "600", "--nproc_per_node", "2", WORKER,
                         "--ready", fifo.path, "--hang"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=marked_env(mark),
    )
    try:
        pids_of(fifo.expect(2))
        launcher = child_of(proc.pid)  # unshare forks the launcher and does not forward
        os.kill(launcher, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        fifo.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "outlived" not in err


def child_of(parent: int) -> int:
    """The one child of ``parent``, from /proc (unshare's only child is the launcher)."""
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as handle:
                if int(handle.read().rsplit(")", 1)[1].split()[1]) == parent:
                    return int(name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"process {parent} has no child")


# ------------------------------------------------------------------ 5: file descriptors


def run_with_nofile(soft: int, hard: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The launcher under ``RLIMIT_NOFILE`` soft/hard (as ``ulimit -Sn``/``-Hn`` would)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(launcher_cmd(*args), capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)


def test_a_plan_above_the_hard_fd_limit_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    for flags in ([], ["--enable_each_rank_log", str(logs)]):
        result = run_with_nofile(64, 64, *flags, "--nproc_per_node", "80", *SH,
                                 "-c", f"touch {tmp_path}/spawned.$RANK")
        assert result.returncode == 2, result.stderr
        assert "RLIMIT_NOFILE" in error_line(result.stderr)
        assert list(tmp_path.glob("spawned.*")) == []
        assert not logs.exists() or list(logs.iterdir()) == []


def test_a_low_soft_fd_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    result = run_with_nofile(64, 4096, "--nproc_per_node", "80", "--no_local_rank",
                             *SH, "-c", "echo up")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": up") == 80


# ------------------------------------------------------------------ 6: per-rank log names


def taken_names(logs: Path, rank: int = 0) -> List[Path]:
    """Regular files at DeepSpeed's name for this second and the next two."""
    planted = []
    for offset in (0, 1, 2):
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() + offset))
        path = logs / f"{stamp}_rank{rank}.log"
        path.write_text("someone else's log\n")
        planted.append(path)
    return planted


def test_a_taken_log_name_gets_a_new_one_and_is_never_overwritten(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    planted = taken_names(logs)
    result = run_launcher("--enable_each_rank_log", str(logs), *SH,
                          "-c", "echo mine; exit 3")
    assert result.returncode == 3, result.stderr
    assert all(p.read_text() == "someone else's log\n" for p in planted)
    ours = [p for p in logs.iterdir() if p not in planted]
    assert len(ours) == 1 and ours[0].read_text() == "mine\n"
    assert ours[0].name.endswith("_rank0.1.log")
    # The failure summary points at the file the output really went to.
    assert f"log: {ours[0]}" in result.stderr
    assert "    mine" in result.stderr


def test_five_launches_sharing_a_log_dir_all_run(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    procs = [
        subprocess.Popen(
            launcher_cmd("--enable_each_rank_log", str(logs), "--nproc_per_node", "2",
                         *SH, "-c", f"echo launch {n} rank $RANK"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in range(5)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    texts = sorted(p.read_text() for p in logs.iterdir())
    expected = sorted(f"launch {n} rank {r}\n" for n in range(5) for r in range(2))
    assert texts == expected


# ------------------------------------------------------------------ 8: --kill_timeout


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "3000000", "-1", "86400.5"])
def test_kill_timeout_must_be_finite_seconds_up_to_a_day(value: str, tmp_path: Path) -> None:
    result = run_launcher(f"--kill_timeout={value}", *SH, "-c",
                          f"touch {tmp_path}/spawned")
    assert result.returncode == 2
    assert "--kill_timeout" in error_line(result.stderr)
    assert not (tmp_path / "spawned").exists()


def test_kill_timeout_of_a_day_is_accepted() -> None:
    result = run_launcher("--kill_timeout", "86400", "--no_python", "/bin/true")
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ 9: master port in use


@pytest.mark.parametrize("how", ["local", "world_info"])
def test_a_master_port_in_use_is_refused_on_the_master_node(how: str, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        if how == "local":
            flags = ["--master_port", str(port)]
        else:
            import base64
            import json

            info = base64.urlsafe_b64encode(json.dumps({"localhost": [0]}).encode()).decode()
            flags = ["--world_info", info, "--node_rank", "0", "--master_addr", "127.0.0.1",
                     "--master_port", str(port)]
        result = run_launcher(*flags, *SH, "-c",
                              f"touch {tmp_path}/spawned")
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert f"master port {port}" in line and "--master_port" in line
    assert not (tmp_path / "spawned").exists()


def test_a_free_explicit_master_port_is_not_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_launcher("--master_port", str(port), "--no_python", "/bin/true")
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ 10: the PID file


def test_a_pid_file_naming_a_live_launcher_is_refused(mark: str, tmp_path: Path) -> None:
    env = marked_env(mark, TMPDIR=str(tmp_path))
    pid_file = tmp_path / "555.deepspeed"
    fifo = Fifo(tmp_path / "f")
    first = start_launcher("--save_pid", "555", WORKER, "--ready", fifo.path, "--hang", env=env)
    try:
        fifo.expect(1)
        assert pid_file.read_text() == str(first.pid)
        second = run_launcher("--save_pid", "555", *SH, "-c",
                              f"touch {tmp_path}/spawned", env=env)
        assert second.returncode == 2
        line = error_line(second.stderr)
        assert "PID file" in line and str(first.pid) in line
        assert not (tmp_path / "spawned").exists()
        assert pid_file.read_text() == str(first.pid)  # still the running launcher's
        signal_and_await_ack(first, signal.SIGTERM)
        first.communicate(timeout=60)
    finally:
        fifo.close()
        if first.poll() is None:
            first.kill()
    assert not pid_file.exists()
    assert wait_no_marked(mark) == []


@pytest.mark.root
def test_a_full_tmpdir_is_one_line_and_leaves_no_pid_file(tmp_path: Path) -> None:
    # A private mount namespace: the small tmpfs vanishes with it, whatever happens here.
    require(IS_ROOT and shutil.which("unshare") is not None, "root and unshare(1)")
    disk = tmp_path / "small"
    disk.mkdir()
    command = " ".join(f"'{a}'" for a in launcher_cmd(
        "--save_pid", "321", *SH, "-c", f"touch {tmp_path}/spawned"))
    script = (
        f"mount -n -t tmpfs -o size=8k tmpfs {disk} || exit 99; "
        f"dd if=/dev/zero of={disk}/fill bs=1k count=64 2>/dev/null; "
        f"TMPDIR={disk} {command}; echo \"rc=$?\" >&2; ls -A {disk} >&2"
    )
    result = subprocess.run(["unshare", "--mount", "/bin/sh", "-c", script],
                            capture_output=True, text=True, timeout=60)
    require(result.returncode != 99, f"a mountable tmpfs ({result.stderr.strip()})")
    lines = result.stderr.strip().splitlines()
    assert lines[-2:] == ["rc=2", "fill"], result.stderr  # nothing of ours left in $TMPDIR
    error_line("\n".join(lines[:-2]))
    assert "PID file" in lines[0] and "TMPDIR" in lines[0]
    assert not (tmp_path / "spawned").exists()


# ------------------------------------------------------------------ signals are debug lines


def test_every_signal_sent_is_a_debug_line(mark: str, tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "f")
    proc = start_launcher("--log_level", "debug", "--nproc_per_node", "2", WORKER, "--ready",
                          fifo.path, "--hang", "--daemon", env=marked_env(mark))
    try:
        fifo.expect(4)
        signal_and_await_ack(proc, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        fifo.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "sent SIGTERM to 2 worker process group(s)" in err
    assert "process(es) outside the workers' groups: " in err
    assert processes_with_mark(mark) == [] or wait_no_marked(mark) == []
