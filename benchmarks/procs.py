"""Process plumbing for the benchmark: precise exit waits, FIFOs, survivor counts, cleanup.

Rules this module exists to enforce:

* Exit times come from a pidfd becoming readable (the kernel's own "it exited" event), not
  from ``Popen.wait(timeout=...)``, which polls with sleeps of up to 50 ms and would swamp
  the 0.1 s failure-latency target.
* Synchronisation is on FIFOs (workers announce themselves), never on sleeps.
* Survivors are counted by PID from /proc; a zombie is dead (it only waits for its reaper).
* Only PIDs this benchmark started (launchers) or that announced themselves as our workers
  are ever signalled; nothing is looked up by name.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence


class BenchError(RuntimeError):
    """One sample could not be taken (launcher failed to start, timed out, ...)."""


def free_port() -> int:
    """A currently free TCP port, so concurrent test runs on this machine never collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_alive(pid: int) -> bool:
    """True for a live process; a zombie (dead, not yet reaped) or a missing PID is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def alive(pids: Iterable[int]) -> List[int]:
    return [pid for pid in pids if is_alive(pid)]


def wait_gone(pids: Sequence[int], grace: float) -> List[int]:
    """PIDs still alive ``grace`` seconds from now (returns early once all are gone).

    There is no event for "a process that is not my child died" short of one pidfd each;
    a 10 ms /proc poll is used only to confirm the outcome, never to time an event.
    """
    deadline = time.monotonic() + grace
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = alive(left)
    return left


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL the given PIDs (ours only: launchers we started, workers that announced)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def vm_hwm_kib(pid: int) -> Optional[int]:
    """The process's own resident high-water mark (children excluded), from /proc."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Fifo:
    """A named pipe the workers announce on; ``expect`` reads whole lines with a deadline.

    Opened O_RDWR so the open never blocks and the reader never sees EOF while workers come
    and go.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self.buffer = b""
        self.lines: List[str] = []

    def expect(self, count: int, timeout: float, launcher: Optional[Launch] = None) -> List[str]:
        """The next ``count`` lines; fails early if ``launcher`` exits before they arrive."""
        deadline = time.monotonic() + timeout
        watch = [self.fd]
        if launcher is not None:
            watch.append(launcher.pidfd)
        while len(self.lines) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"timed out waiting for {count} announcements: {self.lines}")
            ready, _, _ = select.select(watch, [], [], remaining)
            if self.fd in ready:
                try:
                    self.buffer += os.read(self.fd, 65536)
                except BlockingIOError:
                    pass
                *done, self.buffer = self.buffer.split(b"\n")
                self.lines.extend(line.decode() for line in done)
            elif launcher is not None and launcher.pidfd in ready:
                launcher.reap()
                raise BenchError(
                    f"launcher exited ({launcher.returncode}) before its workers announced "
                    f"themselves: {launcher.tail()}"
                )
        taken, self.lines = self.lines[:count], self.lines[count:]
        return taken

    def close(self) -> None:
        os.close(self.fd)


def pids_in(lines: Iterable[str]) -> List[int]:
    """PIDs from ``worker|child|daemon <rank> <pid>`` lines."""
    kinds = ("worker", "child", "daemon")
    return [int(line.split()[2]) for line in lines if line.split()[0] in kinds]


@dataclass
class Launch:
    """One launcher process, started with ``start`` and timed by its pidfd."""

    proc: subprocess.Popen[bytes]
    pidfd: int
    started_ns: int
    log_path: Path
    exited_ns: Optional[int] = None
    returncode: Optional[int] = None

    @classmethod
    def start(
        cls, argv: Sequence[str], env: Dict[str, str], log_path: Path, stdout: Optional[Path] = None
    ) -> Launch:
        """Start ``argv`` with stdout/stderr to files (a pipe could fill and stall it)."""
        log = open(log_path, "wb")
        out = open(stdout, "wb") if stdout is not None else log
        try:
            started = time.monotonic_ns()
            proc = subprocess.Popen(
                list(argv), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=log
            )
        finally:
            log.close()
            if out is not log:
                out.close()
        return cls(proc, os.pidfd_open(proc.pid), started, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        """Block until exit (precise: pidfd), return the exit time in monotonic ns.

        On timeout the launcher is SIGKILLed and :class:`BenchError` raised.
        """
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        now = time.monotonic_ns()
        if not ready:
            self.kill()
            raise BenchError(f"launcher still running after {timeout:g} s: killed it")
        self.exited_ns = now
        self.reap()
        return now

    def reap(self) -> None:
        self.returncode = self.proc.wait()
        if self.exited_ns is None:
            self.exited_ns = time.monotonic_ns()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.reap()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        os.close(self.pidfd)

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])
