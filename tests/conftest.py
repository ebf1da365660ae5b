"""Shared test helpers: run the real launcher, synchronise on a FIFO, check for survivors.

With ``CI=true`` a missing dependency (torch, Slurm, MPI) fails the test instead of
skipping it: a green CI must mean the real thing ran.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "tests" / "bin"
WORKER = str(BIN / "worker.py")
ALLREDUCE = str(ROOT / "examples" / "allreduce.py")
IN_CI = os.environ.get("CI", "").lower() == "true"
_SESSION_TMP = pytest.StashKey[Tuple[Optional[str], str]]()


def pytest_configure(config: pytest.Config) -> None:
    """One private temp directory for the whole session, removed at its end.

    TMPDIR points into it, so what the tests and everything they start put in the temp dir
    (pytest's own basetemp, torch elastic's ``torchelastic_*``, OpenMPI/PRRTE session dirs,
    Hydra's files, Slurm's state) lands there and goes with it. HPCLAUNCH_KEEP_TMP=1 keeps
    it for a post-mortem.
    """
    if hasattr(config, "workerinput"):
        return
    session_tmp = tempfile.mkdtemp(prefix="hpcl-tests-")
    os.chmod(session_tmp, 0o755)  # tests that drop privileges make their own 1777 dirs
    config.stash[_SESSION_TMP] = (os.environ.get("TMPDIR"), session_tmp)
    os.environ["TMPDIR"] = session_tmp
    tempfile.tempdir = None  # recompute from TMPDIR; pytest's basetemp follows


#: What a test needs beyond Python, by where it lives (``-m "not slurm"`` etc. leaves it out);
#: single tests elsewhere carry their own ``@pytest.mark.root``. ``slow``: a minute or more.
MARKS_BY_PATH = {
    "slurm/": ("slurm", "root"),
    "mpi/": ("mpi", "root"),
    "elastic/test_elastic.py": ("torch",),
    "integration/test_gloo.py": ("torch",),
    "benchmarks/": ("slow", "torch"),
    "packaging/": ("slow", "root"),
    "hardening/test_soak.py": ("slow",),
    "cli/test_scheduler_dry_run.py": ("root",),
}


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Mark each test by what it needs (see :data:`MARKS_BY_PATH`), and ``torch`` wherever
    the ``torch_available`` fixture is used."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        where = Path(str(item.fspath)).resolve().relative_to(tests_dir).as_posix()
        for prefix, names in MARKS_BY_PATH.items():
            if where.startswith(prefix):
                for name in names:
                    item.add_marker(name)
        if "torch_available" in getattr(item, "fixturenames", ()):
            item.add_marker("torch")


def pytest_unconfigure(config: pytest.Config) -> None:
    saved = config.stash.get(_SESSION_TMP, None)
    if saved is None:
        return
    previous, session_tmp = saved
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous
    tempfile.tempdir = None
    if os.environ.get("HPCLAUNCH_KEEP_TMP") == "1":
        print(f"\nhpclaunch tests: kept {session_tmp}", file=sys.stderr)
    else:
        shutil.rmtree(session_tmp, ignore_errors=True)


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI: CI must never pass by skipping the real thing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {what} is missing")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def torch_available() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        require(False, "torch (pip install torch==2.13.0)")


def launcher_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "hpclaunch", *args]


def run_launcher(
    *args: str,
    env: Optional[Dict[str, str]] = None,
    timeout: float = 120,
    cwd: Optional[str] = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        launcher_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped by init) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def survivors(pids: Iterable[int]) -> List[int]:
    return [pid for pid in pids if is_alive(pid)]


def wait_until_empty(find: Callable[[], List[int]], timeout: float = 10.0) -> List[int]:
    """Bounded wait for ``find()`` to come back empty; returns what is still there.

    There is no event for "a process that is not my child died", so this polls /proc
    with a short interval, but only to confirm an outcome, never to order events.
    """
    deadline = time.monotonic() + timeout
    left = find()
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = find()
    return left


def wait_gone(pids: Sequence[int], timeout: float = 10.0) -> List[int]:
    """Wait for processes already sent SIGKILL by the kernel/watchdog to vanish."""
    return wait_until_empty(lambda: survivors(pids), timeout)


def signal_and_await_ack(proc: subprocess.Popen[str], sig: int) -> None:
    """Send ``sig`` to the launcher and read its stderr until it says it got it."""
    proc.send_signal(sig)
    assert proc.stderr is not None
    name = signal.Signals(sig).name
    while True:
        line = proc.stderr.readline()
        assert line, f"the launcher never acknowledged {name}"
        if f"got {name}" in line:
            return


def kill_all(pids: Iterable[int]) -> None:
    """Clean up after a failed test: only processes this test started, by PID."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Fifo:
    """A named pipe workers report to; ``expect`` reads lines with a deadline."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        os.mkfifo(self.path)
        # O_RDWR: never blocks on open and never reads EOF when writers come and go.
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self.buffer = b""
        self.lines: List[str] = []

    def expect(self, count: int, timeout: float = 60.0) -> List[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} lines on the FIFO, got {self.lines}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    self.buffer += os.read(self.fd, 65536)
                except BlockingIOError:
                    continue
                *done, self.buffer = self.buffer.split(b"\n")
                self.lines.extend(line.decode() for line in done)
        taken, self.lines = self.lines[:count], self.lines[count:]
        return taken

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def fifo(tmp_path: Path):  # type: ignore[no-untyped-def]
    channel = Fifo(tmp_path / "ready.fifo")
    yield channel
    channel.close()


def pids_of(lines: Iterable[str], kind: Optional[str] = None) -> List[int]:
    """PIDs from ``"<kind> <rank> <pid>"`` lines."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and (kind is None or parts[0] == kind):
            out.append(int(parts[2]))
    return out


def start_launcher(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        launcher_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def error_line(stderr: str) -> str:
    """The single error line a bad invocation must print, checked for its shape."""
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert lines[0].startswith("hpclaunch: error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


MARK_VAR = "HPCLAUNCH_TEST_MARK"


def marked_env(mark: str, **extra: str) -> Dict[str, str]:
    """The test's environment plus a unique mark every worker and descendant inherits."""
    return dict(os.environ, **{MARK_VAR: mark}, **extra)


def processes_with_mark(mark: str) -> List[int]:
    """Live processes (zombies excluded) whose environment carries this test's mark.

    This finds every descendant of a launch, however it detached, without trusting the
    launcher's own bookkeeping: the independent check of "nothing survived".
    """
    needle = f"{MARK_VAR}={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0") and is_alive(int(name)):
                    found.append(int(name))
        except OSError:
            continue
    return found


def wait_no_marked(mark: str, timeout: float = 10.0) -> List[int]:
    """Bounded wait for every marked process to be gone (after a kill we did not see)."""
    return wait_until_empty(lambda: processes_with_mark(mark), timeout)


@pytest.fixture
def mark() -> str:
    import uuid

    return uuid.uuid4().hex
