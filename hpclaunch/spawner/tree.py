"""Keeping every process a worker starts within reach, and killing them all.

Three layers, because each closes a hole the others leave:

* The launcher is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a descendant that
  double-forks or ``setsid``s is re-parented to the launcher, not to init, so a walk of the
  launcher's process tree finds it and ``waitpid(-1)`` tells when the last one is gone.
* Each worker gets ``PR_SET_PDEATHSIG=SIGKILL``: if the launcher is SIGKILLed, the kernel
  kills the workers at once.
* A watchdog process holds the read end of a pipe whose write end only the launcher holds.
  EOF without a "done" line means the launcher died: the watchdog SIGKILLs the recorded
  process groups and every process carrying this launch's marker variable (which all
  descendants inherit), freezing each first so none can fork away mid-kill. Horovod's
  middleman does this per command; one per launcher is enough.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from typing import Iterable, List, Optional, Set

from hpclaunch import reporter

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: Name of the variable every worker (and so every descendant) carries; its value is a
#: random token per launch, so one launcher never touches another's processes.
TREE_TOKEN_VAR = "HPCLAUNCH_TREE_TOKEN"

_libc: Optional[ctypes.CDLL] = None


def _prctl(option: int, value: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def become_subreaper() -> bool:
    """Adopt orphaned descendants. False where the kernel refuses (non-Linux)."""
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        return False
    return True


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """In a forked child: die with ``sig`` when the forking thread's process dies."""
    _prctl(PR_SET_PDEATHSIG, int(sig))


def load_libc() -> None:
    """Load libc before forking, so children never run the dynamic loader between fork/exec."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)


def descendants(root: int) -> List[int]:
    """Every live descendant of ``root`` (zombies included), found by a walk of /proc."""
    import psutil  # lazily: only teardown needs it

    try:
        return [p.pid for p in psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def marked_processes(token: str) -> List[int]:
    """PIDs whose environment carries ``TREE_TOKEN_VAR=token``: this launch's descendants.

    Unlike a tree walk this works after the launcher died and orphans moved to init. A
    process that rewrote its environment escapes it; the process-group kill covers those.
    """
    needle = f"{TREE_TOKEN_VAR}={token}".encode()
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if needle in data.split(b"\0"):
            found.append(int(name))
    return found


def send(pid: int, sig: int) -> bool:
    log = reporter.get()
    if log.enabled(reporter.DEBUG):  # --log_level debug shows every signal sent
        log.debug(f"sending {signal.Signals(sig).name} to pid {pid}")
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def send_group(pgid: int, sig: int) -> None:
    log = reporter.get()
    if log.enabled(reporter.DEBUG):
        log.debug(f"sending {signal.Signals(sig).name} to process group {pgid}")
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def freeze_and_kill(pids: Iterable[int]) -> int:
    """SIGSTOP all first so none forks a replacement while we go, then SIGKILL all."""
    pids = list(pids)
    for pid in pids:
        send(pid, signal.SIGSTOP)
    killed = 0
    for pid in pids:
        if send(pid, signal.SIGKILL):
            killed += 1
    return killed


# --------------------------------------------------------------------------- watchdog


class Watchdog:
    """The launcher's end of the watchdog pipe."""

    def __init__(self, write_fd: int) -> None:
        self._fd: Optional[int] = write_fd if write_fd >= 0 else None

    def track(self, pgid: int) -> None:
        """Tell the watchdog about a worker's process group (= its PID: one session each)."""
        self._write(f"pgid {pgid}\n")

    def done(self) -> None:
        """Teardown finished cleanly: the watchdog may exit without killing anything."""
        self._write("done\n")
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, line.encode())
        except OSError:
            pass  # the watchdog is gone; the pdeathsig layer still holds


def start_watchdog(token: str, pid_file: Optional[str] = None) -> Watchdog:
    """Fork the watchdog, detached (own session, re-parented away from the launcher).

    It is double-forked *before* the launcher becomes a subreaper, so it is not the
    launcher's child: the launcher's "no children left" test then means "no workers or
    descendants left", and a terminal's Ctrl-C or a scheduler's signal to the launcher's
    process group does not reach it.
    """
    read_fd, write_fd = os.pipe()
    launcher = os.getpid()
    pid = os.fork()
    if pid == 0:  # intermediate
        try:
            os.close(write_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _watchdog_main(read_fd, token, pid_file, launcher)
        finally:
            os._exit(0)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return Watchdog(write_fd)


def _watchdog_main(read_fd: int, token: str, pid_file: Optional[str], launcher: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, read_fd)
    os.closerange(read_fd + 1, 65536)
    groups: Set[int] = set()
    buffer = b""
    clean = False
    while True:
        try:
            chunk = os.read(read_fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"pgid "):
                groups.add(int(line[5:]))
            elif line == b"done":
                clean = True
    if clean:
        return
    _kill_everything(groups, token)
    if pid_file is not None:
        remove_pid_file(pid_file, launcher)


def _kill_everything(groups: Set[int], token: str) -> None:
    for pgid in groups:
        send_group(pgid, signal.SIGKILL)
    # Repeat: a process may have forked between our scan and its freeze.
    for _ in range(20):
        pids = marked_processes(token)
        if not pids:
            return
        freeze_and_kill(pids)
        time.sleep(0.01)  # let the kernel finish the kills before rescanning


def remove_pid_file(path: str, launcher: int) -> None:
    """Remove the PID file only if it still names ``launcher`` (never someone else's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        content = os.read(fd, 64).strip()
    finally:
        os.close(fd)
    if content == str(launcher).encode():
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
