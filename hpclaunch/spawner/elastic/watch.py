"""Elastic mode's workers, seen from the launcher: each start, each exit, each restart.

torch's agent starts and reaps the workers, so the launcher neither forks them nor gets
their exit status from ``wait4``. Two kernel facilities give it the record anyway, with no
polling and nothing private of torch:

* Each worker's first program (:mod:`hpclaunch.spawner.elastic.worker`) sends one datagram
  to an abstract Unix socket the launcher listens on (no file, gone with the launcher),
  saying its rank, local rank and ``TORCHELASTIC_RESTART_COUNT``. The kernel attaches the
  sender's PID (``SO_PASSCRED``), and only a child of the agent is believed.
* The launcher opens a pidfd for it (``pidfd_open``, Linux 5.3+), which becomes readable
  when the worker exits; the worker is then a zombie until the agent reaps it, and its
  ``/proc/<pid>/stat`` still holds its wait status and CPU times (user, system, and of its
  reaped children). Peak RSS is not there (the memory is already gone): elastic workers'
  ``peak_rss_bytes`` is null. If the agent reaps first (it checks every 0.1 s, and faster
  while it stops workers), the status is unknown (null).

A worker whose local rank already started in this round, or whose restart count is higher,
begins a new round: a ``restart`` event (``reason``: the group failed, or the membership
changed), before its ``worker_spawned``. Exits that follow from a cause are marked
``during_teardown``: those after a failure in the same round, and deaths by SIGTERM (the
agent stops a round's workers with it, before SIGKILL), which is the agent's doing.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Set, Tuple

from hpclaunch.spawner import tree
from hpclaunch.spawner.usage import WorkerUsage

if TYPE_CHECKING:
    from hpclaunch.spawner.loop import TreeSupervisor

#: struct ucred: pid, uid, gid.
_UCRED = struct.Struct("3i")


def socket_name(token: str) -> str:
    """The abstract socket's name (without the leading NUL): unique per launch."""
    return f"hpclaunch-workers-{token}"


def listen(token: str) -> socket.socket:
    """The socket workers say hello to, bound before the agent (and so any worker) starts."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind("\0" + socket_name(token))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Worker(NamedTuple):
    rank: int
    local_rank: int
    pid: int


class WorkerWatch:
    """Listens for workers' hellos and watches each one's pidfd, inside the launcher's loop."""

    def __init__(self, supervisor: TreeSupervisor, sock: socket.socket, agent: int) -> None:
        self.supervisor = supervisor
        self.agent = agent
        self.sock = sock
        self.workers: Dict[int, Worker] = {}
        #: TORCHELASTIC_RESTART_COUNT of the current round, and local ranks started in it.
        self.attempt = 0
        self.round_ranks: Set[int] = set()
        self.rounds = 0
        #: A worker of this round failed: the agent stops the rest, whose exits follow from it;
        #: or the agent is stopping this round's workers (one died of its SIGTERM).
        self.round_failed = False
        self.round_stopping = False
        #: (pid, end) of every worker seen to exit.
        self.ends: List[Tuple[int, WorkerUsage]] = []
        supervisor.selector.register(self.sock.fileno(), selectors.EVENT_READ, self.on_hello)

    def on_hello(self, fd: int) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            pid = _sender(ancillary)
            if pid is None or tree.parent_of(pid) != self.agent:
                continue  # not one of our agent's workers: ignored
            try:
                hello = json.loads(data)
                self.started(pid, int(hello["rank"]), int(hello["local_rank"]),
                             int(hello.get("restart", 0)))
            except (ValueError, KeyError, TypeError):
                continue

    def started(self, pid: int, rank: int, local_rank: int, attempt: int) -> None:
        events = self.supervisor.events
        if attempt > self.attempt or local_rank in self.round_ranks:
            self.rounds += 1
            reason = "worker group failed" if attempt > self.attempt else "membership changed"
            events.emit("restart", attempt=attempt, round=self.rounds, reason=reason)
            self.attempt = attempt
            self.round_ranks = set()
            self.round_failed = self.round_stopping = False
        self.round_ranks.add(local_rank)
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pass  # no pidfds here (Linux < 5.3), or it is gone already: no exit to watch
        self.supervisor.usage.start(rank)
        events.emit("worker_spawned", rank=rank, local_rank=local_rank, pid=pid,
                    restart_count=attempt)
        if pidfd >= 0:
            self.workers[pidfd] = Worker(rank, local_rank, pid)
            self.supervisor.selector.register(pidfd, selectors.EVENT_READ, self.on_exit)

    def on_exit(self, pidfd: int) -> None:
        worker = self.workers.pop(pidfd)
        self.supervisor.selector.unregister(pidfd)
        os.close(pidfd)
        pid = worker.pid
        status, cpu = zombie_status(pid, self.agent)
        code = sig = None
        if status is not None:
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
            elif os.WIFEXITED(status):
                code = os.WEXITSTATUS(status)
        # torch's agent stops a round's workers with SIGTERM (then SIGKILL): after a failure,
        # for a membership change, at the end. Such exits follow from a cause elsewhere.
        stopped = sig == signal.SIGTERM or (sig == signal.SIGKILL and self.round_stopping)
        end = self.supervisor.record_exit(pid, worker.rank, worker.local_rank, code, sig, cpu,
                                          None, consequence=self.round_failed or stopped)
        self.ends.append((pid, end))
        if stopped:
            self.round_stopping = True
        elif sig is not None or code not in (0, None):
            self.round_failed = True

    def running(self) -> int:
        return len(self.workers)

    def close(self) -> None:
        for pidfd in list(self.workers):
            self.supervisor.selector.unregister(pidfd)
            os.close(pidfd)
        self.workers.clear()
        self.supervisor.selector.unregister(self.sock.fileno())
        self.sock.close()


def _sender(ancillary: object) -> Optional[int]:
    for level, kind, data in ancillary:  # type: ignore[attr-defined]
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, uid, _ = _UCRED.unpack(data[: _UCRED.size])
            if uid in (os.getuid(), 0):
                return int(pid)
    return None


def zombie_status(pid: int, parent: int) -> Tuple[Optional[int], Optional[float]]:
    """(wait status, CPU seconds) of an exited, not yet reaped child of ``parent``.

    Fields (proc(5)): 14-17 utime, stime, cutime, cstime in clock ticks; 52 exit_code.
    """
    fields = tree.stat_fields(f"/proc/{pid}/stat")
    if fields is None or len(fields) < 50 or fields[0] != "Z" or fields[1] != str(parent):
        return None, None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = sum(int(value) for value in fields[11:15]) / ticks
    return int(fields[49]), round(cpu, 6)


__all__ = ["WorkerWatch", "listen", "socket_name", "zombie_status"]
