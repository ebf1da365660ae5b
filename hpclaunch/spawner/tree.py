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

import errno
import os
import signal
import time
from typing import AbstractSet, Dict, Iterable, List, Optional, Set

from hpclaunch.spawner import child

#: Name of the variable every worker (and so every descendant) carries; its value is a
#: random token per launch, so one launcher never touches another's processes.
TREE_TOKEN_VAR = "HPCLAUNCH_TREE_TOKEN"


def become_subreaper(on: bool = True) -> bool:
    """Adopt orphaned descendants (``on=False``: stop). False where the kernel refuses."""
    try:
        child.prctl(child.PR_SET_CHILD_SUBREAPER, int(on))
    except (OSError, AttributeError):
        return False
    return True


def is_subreaper() -> bool:
    """Whether this process adopts orphaned descendants now (``PR_GET_CHILD_SUBREAPER``)."""
    import ctypes

    value = ctypes.c_int(0)
    try:
        if child.libc().prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return bool(value.value)


PR_GET_CHILD_SUBREAPER = 37


def descendants(root: int, exclude: AbstractSet[int] = frozenset()) -> List[int]:
    """Every live descendant of ``root`` (zombies included).

    Walked down the kernel's own child lists (``/proc/<pid>/task/<tid>/children``) where
    the kernel has them, else from one pass over ``/proc/*/stat``; either way no psutil
    import sits between a signal and the first kill. ``exclude`` are the launcher's own
    helpers (the watchdog, which is the launcher's child when the launcher is PID 1 of a
    namespace and so adopts every orphan): never a worker's leftover.
    """
    table = children_table() if _thread_children(root) is None else None
    found: List[int] = []
    queue = [root]
    while queue:
        pid = queue.pop()
        if table is not None:
            children: Iterable[int] = table.get(pid, ())
        else:
            children = sorted(_thread_children(pid) or ())
        for kid in children:
            if kid not in exclude:
                found.append(kid)
                queue.append(kid)
    return found


def direct_children(pid: int) -> Set[int]:
    """``pid``'s children (zombies included)."""
    children = _thread_children(pid)
    if children is None:
        children = set(children_table().get(pid, []))
    return children


def _thread_children(pid: int) -> Optional[Set[int]]:
    """Children from the per-thread lists, or None where there are none to read.

    A child belongs to the thread that forked it, so every thread's list is read.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    children: Set[int] = set()
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                children.update(int(word) for word in handle.read().split())
        except OSError:
            if tid == str(pid):
                return None  # gone, or a kernel without CONFIG_PROC_CHILDREN
    return children


def children_table() -> Dict[int, List[int]]:
    """parent PID -> child PIDs, for every process on the machine (one read per process)."""
    table: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        parent = parent_of(int(name))
        if parent:
            table.setdefault(parent, []).append(int(name))
    return table


def parent_of(pid: int) -> int:
    """``pid``'s parent PID from /proc (0 when it is gone)."""
    fields = stat_fields(f"/proc/{pid}/stat")
    try:
        return int(fields[1]) if fields is not None else 0
    except (IndexError, ValueError):
        return 0


def stat_fields(path: str) -> Optional[List[str]]:
    """The fields of a /proc stat file after the command name, state first (proc(5)'s
    field 3 on; the name may hold spaces and parentheses, so it is cut at the last ``)``);
    None when the process is gone."""
    try:
        with open(path, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


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
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def send_group(pgid: int, sig: int) -> None:
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
    """The launcher's end of the watchdog pipe, and the watchdog's PID (0: none)."""

    def __init__(self, write_fd: int, pid: int = 0) -> None:
        self._fd: Optional[int] = write_fd if write_fd >= 0 else None
        self.pid = pid

    def track(self, pgid: int) -> None:
        """Tell the watchdog about a worker's process group (= its PID: one session each)."""
        self._write(f"pgid {pgid}\n")

    def track_many(self, pgids: Iterable[int]) -> None:
        """Several groups in one write: each write wakes the watchdog (a context switch on a
        small machine, ~3 ms), and until it is told, pdeathsig and the token cover them."""
        lines = "".join(f"pgid {pgid}\n" for pgid in pgids)
        if lines:
            self._write(lines)

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
    process group does not reach it. The one exception is a launcher that is PID 1 of a
    PID namespace (a container's entrypoint): every orphan, the watchdog included, is then
    re-parented to it, so the watchdog's PID is returned for the loop to leave it out.
    """
    read_fd, write_fd = os.pipe()
    pid_read, pid_write = os.pipe()
    launcher = os.getpid()
    pid = os.fork()
    if pid == 0:  # intermediate
        try:
            os.close(write_fd)
            os.close(pid_read)
            os.setsid()
            grandchild = os.fork()
            if grandchild != 0:
                os.write(pid_write, str(grandchild).encode())
                os._exit(0)
            os.close(pid_write)
            _watchdog_main(read_fd, token, pid_file, launcher)
        finally:
            os._exit(0)
    os.close(read_fd)
    os.close(pid_write)
    os.waitpid(pid, 0)
    try:
        watchdog_pid = int(os.read(pid_read, 32) or b"0")
    finally:
        os.close(pid_read)
    if watchdog_pid <= 0:  # the intermediate's fork failed: there is no watchdog
        os.close(write_fd)
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return Watchdog(write_fd, watchdog_pid)


def _watchdog_main(read_fd: int, token: str, pid_file: Optional[str], launcher: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, read_fd)
    os.closerange(read_fd + 1, child.MAX_FD)
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
        from hpclaunch.spawner.pidfile import remove_pid_file

        remove_pid_file(pid_file, launcher)


def _kill_everything(groups: Set[int], token: str) -> None:
    """Kill the recorded groups, then every marked process until two scans find none.

    One empty scan is not enough: a process caught inside ``execve`` has no readable
    environment for a moment, and would be missed if it were the last one.
    """
    empty_scans = 0
    for _ in range(50):
        for pgid in groups:
            send_group(pgid, signal.SIGKILL)
        pids = marked_processes(token)
        if pids:
            empty_scans = 0
            freeze_and_kill(pids)
        else:
            empty_scans += 1
            if empty_scans == 2:
                return
        time.sleep(0.01)  # let the kernel finish the kills (and any exec) before rescanning
