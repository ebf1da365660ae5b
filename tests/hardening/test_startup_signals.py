"""Signals in the launcher's first moments: handled from the first line of its entry point.

A SIGINT/TERM/HUP at any time stops the launch with 128+s and no traceback; a SIGUSR1/2 at
any time never kills the launcher and reaches every worker, also those started after it
arrived.

The random-delay runs fork this test process and call the real entry point
(:func:`hpclaunch.__main__.main`) in the child, with a fresh interpreter's dispositions
(Python's KeyboardInterrupt handler for SIGINT, the default action for the others), dozens
of runs in seconds. The world is a big one (40,000 ranks), so reading and planning it takes
a real launcher's ~100 ms of start-up before the first worker starts. The delay counts from
the moment the entry point holds its signals (where :func:`hpclaunch.hold.hold` returns; on
a launcher without it, from the entry point's call): no Python program can handle a signal
before its first line has run. Whatever the child would have printed as a traceback is
caught and written to its output.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, List

import pytest

from tests.conftest import (
    ROOT,
    Fifo,
    free_port,
    kill_all,
    launcher_cmd,
    marked_env,
    processes_with_mark,
    wait_no_marked,
)

#: (signal, runs): ~50 launches of two workers each, about 15 s on two busy cores.
RUNS = {signal.SIGINT: 16, signal.SIGTERM: 8, signal.SIGHUP: 5, signal.SIGUSR1: 16,
        signal.SIGUSR2: 5}
#: Where the signal lands, from the moment the signals are held.
LATEST = 0.200
#: Hosts of 2 slots in the world: ~100 ms to read and plan, as a big job's launcher takes.
HOSTS = 20_000
#: Exit status of a child whose entry point raised (a traceback is in its output).
RAISED = 70


def _child(argv: List[str], out: int, ready: int) -> None:
    """In the forked child: become a fresh launcher process and run the entry point."""
    code = RAISED
    try:
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.stdout = open(1, "w", closefd=False)  # pytest's capture is not the child's
        sys.stderr = open(2, "w", closefd=False)
        from hpclaunch.__main__ import main

        try:
            import hpclaunch.hold as first_line
        except ImportError:  # a launcher without it: time from the entry point's call
            os.write(ready, b".")
        else:
            held = first_line.hold

            def hold_then_tell() -> Any:
                signals = held()
                os.write(ready, b".")
                return signals

            first_line.hold = hold_then_tell
        # A fresh interpreter's dispositions: Python's SIGINT handler, the default action
        # for the others (SIGUSR1's kills), nothing blocked.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for other in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(other, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        code = main(argv)
    except BaseException:  # noqa: B036 - what a real launcher would print, then exit
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


def _launch_and_signal(argv: List[str], sig: int, delay: float, out: Path, mark: str) -> int:
    """Fork a launcher, send ``sig`` ``delay`` s after it holds its signals; its wait status."""
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    ready_read, ready_write = os.pipe()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, list(RUNS))
    os.environ["HPCLAUNCH_TEST_MARK"] = mark  # the child's workers carry it
    try:
        pid = os.fork()
        if pid == 0:
            _child(argv, out_fd, ready_write)
    finally:
        del os.environ["HPCLAUNCH_TEST_MARK"]
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(out_fd)
        os.close(ready_write)
    try:
        os.read(ready_read, 1)  # b"." once held; b"" if the child ended first
    finally:
        os.close(ready_read)
    time.sleep(delay)  # the moment under test, not a synchronisation
    os.kill(pid, sig)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.fixture(scope="module")
def big_world(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("world") / "world.json"
    path.write_text(json.dumps({f"n{i:05d}": [0, 1] for i in range(HOSTS)}))
    return str(path)


@pytest.mark.parametrize("sig", list(RUNS), ids=[signal.Signals(s).name for s in RUNS])
def test_a_signal_at_any_moment_of_start_up(sig: int, big_world: str, tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    chooser = random.Random(seed)
    name = signal.Signals(sig).name
    argv = ["--world_info", f"@{big_world}", "--node_rank", "0", "--master_port",
            str(free_port()), "--kill_timeout", "5", "--no_local_rank", "--no_python",
            "/bin/sleep", "30"]
    for run in range(RUNS[sig]):
        delay = chooser.uniform(0, LATEST)
        out = tmp_path / f"run{run}.txt"
        mark = f"{os.getpid()}-{sig}-{run}-{seed}"
        status = _launch_and_signal(argv, sig, delay, out, mark)
        text = out.read_text(errors="replace")
        left = wait_no_marked(mark)
        kill_all(left)
        where = f"run {run} (seed {seed}), {name} {delay * 1000:.1f} ms in:\n{text}"
        assert "Traceback" not in text, where
        assert os.WIFEXITED(status), f"killed by signal {os.WTERMSIG(status)}: {where}"
        assert left == [], where
        # Every handled signal ends this launch with 128+s: a stop signal tears the workers
        # down (or stops the launch before any starts); a forwarded one reaches both of
        # them (sleep dies of it) and their death is the launch's failure, never exit 0.
        assert os.WEXITSTATUS(status) == 128 + sig, where
        if sig in (signal.SIGUSR1, signal.SIGUSR2):
            assert f"forwarded {name} to 2 worker(s)" in text, where


def test_sigusr1_during_start_up_reaches_every_one_of_64_workers(tmp_path: Path,
                                                                 mark: str) -> None:
    """The launcher is started with SIGUSR1 blocked, as its workers then are: a forwarded
    SIGUSR1 waits in each worker, pending, until the worker asks for it, so "reached" is
    what each worker itself says, whenever it started."""
    fifo = Fifo(tmp_path / "got")
    worker = (
        "import os, signal, sys\n"
        "got = signal.sigtimedwait({signal.SIGUSR1}, 20)\n"
        f"fd = os.open({fifo.path!r}, os.O_WRONLY)\n"
        "os.write(fd, f'{os.environ[\"RANK\"]} {\"got\" if got else \"missed\"}\\n'.encode())\n"
        "sys.exit(0 if got else 3)\n"
    )
    script = tmp_path / "wait_usr1.py"
    script.write_text(worker)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        proc = subprocess.Popen(
            launcher_cmd("--nproc_per_node", "64", "--no_local_rank", "--no_python",
                         sys.executable, "-I", str(script)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=marked_env(mark),
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert "64 worker(s)" in banner
        proc.send_signal(signal.SIGUSR1)  # right after the banner: most workers not started
        lines = fifo.expect(64, timeout=120)
        _, err = proc.communicate(timeout=120)
    finally:
        fifo.close()
        if proc.poll() is None:
            proc.kill()
        kill_all(processes_with_mark(mark))
    assert sorted(lines) == sorted(f"{rank} got" for rank in range(64))
    assert proc.returncode == 0, err
    assert "forwarded SIGUSR1 to 64 worker(s)" in err


def test_a_stop_signal_blocked_by_the_parent_still_stops_the_launch(
    tmp_path: Path, mark: str
) -> None:
    """A launcher started with SIGTERM blocked (a parent that blocks it around its fork)
    handles it all the same: its contract is to tear down on SIGTERM. Its workers start with
    the mask it was started with (docs/cli.md, the kernel's SigBlk says so), so the teardown's
    SIGTERM waits in them and the SIGKILL after --kill_timeout ends them."""
    fifo = Fifo(tmp_path / "ready")
    masks = tmp_path / "masks"
    masks.mkdir()
    # Python, not sh, reads its own mask: the shell's exec of its last command would not.
    worker = ("import os, time; pid = str(os.getpid())\n"
              "status = open('/proc/self/status').read()\n"
              f"open('{masks}/' + pid, 'w').write(status.split('SigBlk:')[1].split()[0])\n"
              f"open('{fifo.path}', 'w').write(pid + '\\n')\n"
              "time.sleep(60)\n")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    try:
        proc = subprocess.Popen(
            launcher_cmd("--nproc_per_node", "2", "--no_local_rank", "--kill_timeout", "1",
                         "--no_python", sys.executable, "-c", worker),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=marked_env(mark),
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        fifo.expect(2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        fifo.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert wait_no_marked(mark) == []
    blocked = [int(path.read_text(), 16) for path in masks.iterdir()]
    assert len(blocked) == 2
    for mask in blocked:
        assert mask & (1 << (signal.SIGTERM - 1)), f"the parent's mask not passed on: {mask:x}"


def test_the_signals_held_first_are_the_ones_the_launcher_handles() -> None:
    """hpclaunch.hold names them without ``signal``'s enums (they cost the window)."""
    from hpclaunch.hold import HELD_SIGNALS
    from hpclaunch.spawner.inbox import HANDLED_SIGNALS

    assert sorted(HELD_SIGNALS) == sorted(int(sig) for sig in HANDLED_SIGNALS)


@pytest.mark.parametrize(("entry", "flag"), [("hpclaunch.__main__", "--version"),
                                            ("hpclaunch.torchrun", "--help")])
def test_the_entry_point_holds_signals_before_importing_more(tmp_path: Path, entry: str,
                                                             flag: str) -> None:
    """What runs before the first line's hold: only the package's own (small) __init__s and
    hpclaunch.hold; ``typing``, ``enum`` (``signal``'s) and the CLI come after it. Both
    commands: ``hpclaunch`` and ``hpclaunch-torchrun``."""
    probe = (
        "import sys\n"
        "import hpclaunch.hold as hold\n"
        "real = hold.hold\n"
        "def spy():\n"
        "    print(sorted(m for m in sys.modules if m in ('typing', 'enum', 'signal')\n"
        "                 or m.startswith('hpclaunch')))\n"
        "    return real()\n"
        "hold.hold = spy\n"
        f"from {entry} import main\n"
        f"sys.exit(main([{flag!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    before = result.stdout.splitlines()[0]
    assert before == str(sorted(["hpclaunch", entry, "hpclaunch.hold"])), before
