"""Every rank's stack on demand: SIGQUIT to the launcher (or Ctrl-\\ on its terminal) dumps
every local rank's threads, rank-prefixed on the console and in the rank's log, and the job
goes on to exit 0. Real launchers, real Python workers, real ptys; synchronised on FIFOs and
on the launcher's own output, never on sleeps.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import termios
import time
from pathlib import Path
from typing import List

import pytest

from hpclaunch.spawner.hang import dump_signal
from tests.conftest import (
    Fifo,
    kill_all,
    launcher_cmd,
    marked_env,
    pids_of,
    run_launcher,
    wait_no_marked,
)
from tests.dumps import HANG, Dump, dumped, hang_line, innermost, read_until, stacks


def start(*args: str, env: dict) -> subprocess.Popen[bytes]:  # type: ignore[type-arg]
    return subprocess.Popen(launcher_cmd(*args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def gate_job(fifo: Fifo, go: Path, *flags: str, mark: str) -> subprocess.Popen[bytes]:
    os.mkfifo(go)
    return start("--nproc_per_node", "2", *flags, HANG, "gate", "--ready", fifo.path,
                 "--go", str(go), env=marked_env(mark))


def release(go: Path) -> None:
    """Let every worker blocked opening ``go`` for reading go on."""
    os.close(os.open(go, os.O_WRONLY))


def at_the_gate(dump: Dump) -> bool:
    """The one thread's frames run from the module down into ``gate`` (where it waits, or
    still in ``announce``, which says it is ready just before)."""
    (frames,) = dump.threads.values()
    return (
        frames[0].function == "<module>"
        and frames[-1].file == HANG
        and frames[-1].function in ("gate", "announce")
        and any(f.function == "gate" for f in frames)
    )


def test_sigquit_dumps_every_rank_and_the_job_goes_on(
    tmp_path: Path, fifo: Fifo, mark: str
) -> None:
    go = tmp_path / "go.fifo"
    proc = gate_job(fifo, go, mark=mark)
    try:
        pids = {int(line.split()[1]): int(line.split()[2]) for line in fifo.expect(2)}
        proc.send_signal(signal.SIGQUIT)
        early = read_until(proc, dumped([0, 1]))
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids.values())  # it went on
        release(go)
        out, err = proc.communicate(timeout=60)
        text = early + err.decode()
        assert proc.returncode == 0, text
        assert "got SIGQUIT: dumping the stacks of 2 worker(s)" in text
        found = stacks(text)
        for rank in (0, 1):
            (dump,) = found[rank]
            assert f"stack of rank {rank} (pid {pids[rank]}, on SIGQUIT)" in dump.header
            assert at_the_gate(dump), dump
        assert wait_no_marked(mark) == []
    finally:
        kill_all(pids_of(fifo.lines))
        proc.kill()
        proc.wait()


def test_ctrl_backslash_on_the_terminal_reaches_the_launcher_only(
    tmp_path: Path, fifo: Fifo, mark: str
) -> None:
    """The terminal's SIGQUIT goes to its foreground process group: the launcher's. Workers
    run in their own sessions, so theirs stays at Python's default (a core dump): had it
    reached them, the job would end 131, not 0."""
    go = tmp_path / "go.fifo"
    os.mkfifo(go)
    leader, follower = os.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        launcher_cmd("--nproc_per_node", "2", HANG, "gate", "--ready", fifo.path,
                     "--go", str(go)),
        stdin=follower, stdout=follower, stderr=follower, start_new_session=True,
        preexec_fn=controlling_terminal, env=marked_env(mark),
    )
    os.close(follower)
    text = b""

    def drain(until: float) -> None:
        nonlocal text
        while time.monotonic() < until:
            ready, _, _ = select.select([leader], [], [], until - time.monotonic())
            if not ready:
                return
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the launcher closed its terminal
                return
            if not chunk:
                return
            text += chunk
            if dumped([0, 1])(text.decode(errors="replace")):
                return

    try:
        pids_of(fifo.expect(2), "ready")
        os.write(leader, b"\x1c")  # Ctrl-\
        drain(time.monotonic() + 60)
        assert dumped([0, 1])(text.decode(errors="replace")), text.decode()
        release(go)
        assert proc.wait(timeout=60) == 0, text.decode()
        drain(time.monotonic() + 5)
        found = stacks(text.decode(errors="replace").replace("\r\n", "\n"))
        assert all(at_the_gate(found[rank][0]) for rank in (0, 1)), found
        assert wait_no_marked(mark) == []
    finally:
        kill_all(pids_of(fifo.lines))
        proc.kill()
        proc.wait()
        os.close(leader)


def test_the_dump_goes_to_each_rank_s_log_too(tmp_path: Path, fifo: Fifo, mark: str) -> None:
    go = tmp_path / "go.fifo"
    logs = tmp_path / "logs"
    proc = gate_job(fifo, go, "--enable_each_rank_log", str(logs), mark=mark)
    try:
        fifo.expect(2)
        proc.send_signal(signal.SIGQUIT)
        read_until(proc, dumped([0, 1]))
        release(go)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        for rank in (0, 1):
            (log,) = logs.glob(f"*_rank{rank}.log")
            # The log holds the rank's own lines unprefixed: the dump is written the same way.
            text = "".join(f"[rank{rank}]: {line}\n" for line in log.read_text().splitlines())
            (dump,) = stacks(text)[rank]
            assert "on SIGQUIT" in dump.header
            assert at_the_gate(dump), dump
    finally:
        kill_all(pids_of(fifo.lines))
        proc.kill()
        proc.wait()


def test_a_worker_signalled_by_hand_is_dumped_as_well(
    tmp_path: Path, fifo: Fifo, mark: str
) -> None:
    """``kill -s SIGRTMIN+7 <worker>`` (the dump signal, documented) dumps that rank alone."""
    go = tmp_path / "go.fifo"
    proc = gate_job(fifo, go, mark=mark)
    try:
        pids = {int(line.split()[1]): int(line.split()[2]) for line in fifo.expect(2)}
        os.kill(pids[1], dump_signal())
        early = read_until(proc, dumped([1]))
        release(go)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        found = stacks(early + err.decode())
        assert list(found) == [1]
        assert "signalled directly" in found[1][0].header
    finally:
        kill_all(pids_of(fifo.lines))
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("mode", ["select", "pause"])
def test_a_worker_blocked_in_c_still_dumps(mode: str, mark: str) -> None:
    result = run_launcher("--nproc_per_node", "2", "--stall_timeout", "2", "--kill_timeout",
                          "2", HANG, mode, env=marked_env(mark))
    assert result.returncode == 124, result.stderr
    found = stacks(result.stderr)
    for rank in (0, 1):
        (dump,) = found[rank]
        assert "stalled" in dump.header and "sleeping" in dump.header
        frame = innermost(dump)[-1]
        assert (frame.line, frame.function) == (hang_line(mode), {
            "select": "blocked_in_select", "pause": "paused"}[mode])
    assert wait_no_marked(mark) == []


def test_a_deadlock_of_two_threads_shows_both(mark: str) -> None:
    result = run_launcher("--nproc_per_node", "1", "--stall_timeout", "2", "--kill_timeout",
                          "2", HANG, "deadlock", env=marked_env(mark))
    assert result.returncode == 124, result.stderr
    (dump,) = stacks(result.stderr)[0]
    # The two deadlocked threads wait on the inner lock; the main thread joins them
    # (its innermost frames are threading's, below the script's join line).
    assert len(dump.threads) == 3, dump
    in_script = [(f.file, f.line) for f in innermost(dump) if f.file == HANG]
    assert in_script == [(HANG, hang_line("deadlock"))] * 2, dump
    main = [frames for frames in dump.threads.values() if frames[0].function == "<module>"]
    assert len(main) == 1 and (HANG, hang_line("join")) in [(f.file, f.line) for f in main[0]]
    assert "3 threads (3 sleeping)" in dump.header
    assert wait_no_marked(mark) == []


def test_a_spinning_rank_and_a_sleeping_rank_look_different(mark: str) -> None:
    result = run_launcher("--nproc_per_node", "2", "--stall_timeout", "2", "--kill_timeout",
                          "1", HANG, "spin", env=marked_env(mark))
    assert result.returncode == 124, result.stderr
    found = stacks(result.stderr)
    cpu = {}
    for rank in (0, 1):
        (dump,) = found[rank]
        words = dump.header.split("): ", 1)[1]
        used = words.split(" s CPU in the last ")[0].rsplit(", ", 1)[-1]
        cpu[rank] = float(used)
        assert (("running" if rank == 0 else "sleeping") in words.split(",")[0]), words
    spinning = innermost(found[0][0])[-1]  # in the loop: its test or its body
    assert spinning.function == "spin" and spinning.line in (hang_line("spin") - 1,
                                                             hang_line("spin"))
    assert innermost(found[1][0])[-1].line == hang_line("idle")
    assert cpu[0] > 0.1 and cpu[1] < 0.05 and cpu[0] > 5 * cpu[1], cpu
    assert wait_no_marked(mark) == []


def test_a_non_python_worker_gets_its_process_state(tmp_path: Path, mark: str) -> None:
    script = tmp_path / "quiet.sh"
    script.write_text("#!/bin/sh\necho started\nexec sleep 600\n")
    script.chmod(0o755)
    result = run_launcher("--nproc_per_node", "1", "--no_python", "--no_local_rank",
                          "--stall_timeout", "1", "--kill_timeout", "1", str(script),
                          env=marked_env(mark))
    assert result.returncode == 124, result.stderr
    (dump,) = stacks(result.stderr)[0]
    assert "sleeping in " in dump.header and "1 thread" in dump.header
    assert dump.threads == {}
    assert any("no Python stack" in line for line in dump.other), dump
    assert wait_no_marked(mark) == []


def test_no_stack_dumps_leaves_workers_untouched(tmp_path: Path, mark: str) -> None:
    """The opt-out: no hook in the worker (no handler, PYTHONPATH as given), and a stall
    still reports the stall and each process's state."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, signal, sys\n"
        "mask = [l for l in open('/proc/self/status') if l.startswith('SigCgt')][0]\n"
        f"print('caught', int(mask.split()[1], 16) >> ({dump_signal()} - 1) & 1,\n"
        "      'pythonpath', os.environ.get('PYTHONPATH'), flush=True)\n"
        "signal.pause()\n"
    )
    result = run_launcher("--nproc_per_node", "1", "--no_stack_dumps", "--stall_timeout", "1",
                          "--kill_timeout", "1", str(probe), env=marked_env(mark))
    assert result.returncode == 124, result.stderr
    assert f"caught 0 pythonpath {os.environ.get('PYTHONPATH')}" in result.stdout
    (dump,) = stacks(result.stderr)[0]
    assert dump.threads == {} and "sleeping" in dump.header
    assert any("--no_stack_dumps" in line for line in dump.other)
    assert wait_no_marked(mark) == []


def test_py_spy_adds_the_native_frames(tmp_path: Path, fifo: Fifo, mark: str) -> None:
    from hpclaunch.spawner.stacks import find_pyspy
    from tests.conftest import require

    require(find_pyspy() is not None, "py-spy (pip install py-spy, the [py-spy] extra)")
    result = run_launcher("--nproc_per_node", "1", "--stall_timeout", "2", "--kill_timeout",
                          "1", HANG, "select", env=marked_env(mark))
    assert result.returncode == 124, result.stderr
    native: List[str] = []
    for line in result.stderr.splitlines():  # a one-rank world: no [rank0] prefix
        if line.startswith("hpclaunch: native stack of rank 0") or native:
            native.append(line)
    assert native, result.stderr
    # py-spy's frames, innermost last: the C select call comes after the Python frame.
    python_frame = next(i for i, line in enumerate(native) if f"hang.py:{hang_line('select')}"
                        in line)
    assert any("select" in line and "hang.py" not in line for line in native[python_frame + 1:])
    assert wait_no_marked(mark) == []
