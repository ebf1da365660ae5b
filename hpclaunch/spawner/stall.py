"""``--stall_timeout``: when has a node stalled, and asking Slurm for the other nodes' stacks.

A rank makes *progress* when it writes to stdout or stderr (the relay stamps
``OutputRelay.progress[rank]`` on the read it makes anyway: no syscall per line) or touches
its heartbeat file (``HPCLAUNCH_HEARTBEAT_FILE``, looked at no more than once a second). A
rank *counts* once it has made progress once. :class:`StallWatch` finds the moment every
counting rank of this node has been quiet for the timeout; what happens then is
:class:`~hpclaunch.spawner.hang.HangWatch`'s (report, :class:`StepSignal` under Slurm, the
dumps, the teardown, exit 124).

No polling while progress flows: the event loop wakes for the watch once half the timeout
after the latest progress it knows of (then it takes each worker's CPU time, so the report
can say how much CPU the quiet half used), and once at the deadline; output in between
costs nothing. A console that holds the workers back (back-pressure) is not a stall.

The heartbeat file is an unnamed file of the launcher's (``O_TMPFILE``), named to the worker
as ``/proc/<launcher>/fd/<n>``: ``touch``, ``os.utime`` or ``Path.touch`` on that path update
it, the launcher reads its mtime with one ``fstat``, and nothing is ever left on disk.

Imported only when ``--stall_timeout`` is given.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from hpclaunch.fast import which
from hpclaunch.reporter import Reporter
from hpclaunch.spawner.stacks import DumpTarget, read_cpu, start_helper

#: Heartbeat files are read at most this often.
HEARTBEAT_READ_SECONDS = 1.0
#: How long ``scancel --signal=QUIT`` may take before the teardown goes on without it.
SCANCEL_WAIT_SECONDS = 10.0


# --------------------------------------------------------------------------- heartbeats


class Heartbeats:
    """One unnamed file per local rank (slot); its mtime is the rank's last heartbeat."""

    def __init__(self, slots: int, env: Mapping[str, str]) -> None:
        self.fds: List[int] = []
        self.born: List[int] = []
        self.me = os.getpid()
        #: slot -> monotonic time of its latest touch, as last read
        self.seen: Dict[int, float] = {}
        self.read_at = -HEARTBEAT_READ_SECONDS
        try:
            for _ in range(slots):
                fd = _unnamed_file(env)
                self.fds.append(fd)
                self.born.append(os.fstat(fd).st_mtime_ns)
        except BaseException:
            self.close()
            raise

    def path(self, slot: int) -> str:
        return f"/proc/{self.me}/fd/{self.fds[slot]}"

    def read(self, now: float) -> bool:
        """Look at every file, unless they were looked at less than a second ago; True when
        what :attr:`seen` holds is as of ``now``."""
        if not self.fds:
            return True
        if now < self.read_at + HEARTBEAT_READ_SECONDS:
            return False
        self.read_at = now
        wall = time.time_ns()
        for slot, fd in enumerate(self.fds):
            touched = os.fstat(fd).st_mtime_ns
            if touched != self.born[slot]:
                self.seen[slot] = now - max(0, wall - touched) / 1e9
        return True

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _unnamed_file(env: Mapping[str, str]) -> int:
    """A file with no name (so none is ever left behind), in /dev/shm or the temp dir."""
    flags = os.O_RDWR | os.O_CLOEXEC
    places = ["/dev/shm", env.get("TMPDIR") or "/tmp"]
    for place in places:
        try:
            return os.open(place, flags | getattr(os, "O_TMPFILE", 0x410000), 0o600)
        except OSError:
            continue
    # No O_TMPFILE there (an old kernel, a network file system): create, then unlink.
    path = os.path.join(places[-1], f".hpclaunch-heartbeat-{os.getpid()}-{os.urandom(6).hex()}")
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.unlink(path)
    return fd


# --------------------------------------------------------------------------- the watch


class Stall(NamedTuple):
    """What a stall looked like when it was found."""

    #: ranks that made progress once and none for the timeout
    ranks: Tuple[int, ...]
    #: ranks that never made any (they do not count)
    silent: Tuple[int, ...]
    #: seconds since the latest progress of any counting rank
    quiet: float


class StallWatch:
    """Decides when this node has stalled; woken by the event loop at :meth:`next_timeout`."""

    def __init__(
        self,
        timeout: float,
        output: Mapping[int, float],
        heartbeats: Heartbeats,
    ) -> None:
        self.timeout = timeout
        self.half = timeout / 2
        #: rank -> monotonic time of its latest output (the relay's stamps; elastic: none)
        self.output = output
        self.heartbeats = heartbeats
        self.due = time.monotonic() + self.half
        #: pid -> (time, CPU seconds) taken in the current quiet period, and its start
        self.cpu: Dict[int, Tuple[float, float]] = {}
        self.cpu_for = -1.0
        #: The last time the console was found holding the workers back (counts as progress).
        self.excused = float("-inf")

    def next_timeout(self, now: float) -> float:
        return max(0.0, self.due - now)

    def last_progress(self, target: DumpTarget) -> Optional[float]:
        stamps = [self.output.get(target.rank), self.heartbeats.seen.get(target.slot)]
        known = [stamp for stamp in stamps if stamp is not None]
        return max(known) if known else None

    def check(self, targets: Sequence[DumpTarget], now: float, held_back: bool) -> Optional[Stall]:
        """At or after :attr:`due`: the stall, or None (and when to look again)."""
        if now < self.due:
            return None
        if held_back:  # the console holds the workers' output back: not their stall
            self.excused = now
            self.due = now + self.half
            return None
        fresh = self.heartbeats.read(now)
        progress = {t.rank: self.last_progress(t) for t in targets}
        counted = [stamp for stamp in progress.values() if stamp is not None]
        if not counted:
            self.due = now + max(self.half, HEARTBEAT_READ_SECONDS)
            return None
        latest = max(*counted, self.excused)
        quiet = now - latest
        if quiet >= self.timeout:
            if not fresh:  # the files were read a moment ago: read them again before deciding
                self.due = self.heartbeats.read_at + HEARTBEAT_READ_SECONDS
                return None
            return Stall(
                ranks=tuple(sorted(r for r, p in progress.items() if p is not None)),
                silent=tuple(sorted(r for r, p in progress.items() if p is None)),
                quiet=quiet,
            )
        if quiet >= self.half:
            if self.cpu_for != latest:  # halfway through this quiet period: CPU so far
                self.cpu = {}
                for target in targets:
                    used = read_cpu(target.pid)
                    if used is not None:
                        self.cpu[target.pid] = (now, used)
                self.cpu_for = latest
            self.due = latest + self.timeout
        else:
            self.due = latest + self.half
        return None


# --------------------------------------------------------------------------- other nodes


class StepSignal:
    """``scancel --signal=QUIT <job>.<step>``, run as a helper child: the step's tasks (every
    node's launcher) dump their ranks. Its output is read by the event loop; it says nothing
    when it succeeds.

    This launcher is one of those tasks, so its own SIGQUIT comes back (:meth:`echo`). The
    teardown waits for it (at most :data:`SCANCEL_WAIT_SECONDS`): proof that Slurm delivered
    the signal, and no late SIGQUIT can meet the launcher after its handlers are gone (the
    default action would dump core).
    """

    def __init__(
        self,
        step: str,
        selector: selectors.BaseSelector,
        reporter: Reporter,
        adopt: Callable[[int], None],
    ) -> None:
        self.selector = selector
        self.reporter = reporter
        self.pid = 0
        self.fd = -1
        self.output = b""
        self.deadline = time.monotonic() + SCANCEL_WAIT_SECONDS
        self.echoed = True  # until scancel has started: nothing to wait for
        scancel = which("scancel")
        if scancel is None:
            reporter.warning("scancel is not on PATH: the other nodes' stacks are not dumped "
                             f"(run 'scancel --signal=QUIT {step}' yourself)")
            return
        reporter.info(f"asking Slurm to dump every node's stacks: scancel --signal=QUIT {step}")
        try:
            self.pid, self.fd = start_helper([scancel, "--signal=QUIT", step], dict(os.environ))
        except OSError as exc:
            reporter.warning(f"cannot run scancel: {exc}")
            return
        adopt(self.pid)
        self.echoed = False
        selector.register(self.fd, selectors.EVENT_READ, self.on_output)

    @property
    def running(self) -> bool:
        return self.fd >= 0

    @property
    def waiting(self) -> bool:
        """scancel still runs, or this launcher's own SIGQUIT has not come back yet."""
        return self.running or not self.echoed

    def echo(self) -> None:
        """This launcher got the step's SIGQUIT."""
        self.echoed = True

    def on_output(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            if not data:
                self.end(timed_out=False)
                return
            self.output = (self.output + data)[-4096:]

    def on_wake(self) -> None:
        if time.monotonic() < self.deadline:
            return
        if self.running:
            self.end(timed_out=True)
        if not self.echoed:
            self.echoed = True
            self.reporter.warning(f"Slurm did not deliver SIGQUIT to this launcher within "
                                  f"{SCANCEL_WAIT_SECONDS:g} s; going on")

    def end(self, timed_out: bool) -> None:
        if not self.running:
            return
        self.selector.unregister(self.fd)
        os.close(self.fd)
        self.fd = -1
        if timed_out:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reporter.warning(f"scancel took more than {SCANCEL_WAIT_SECONDS:g} s; going "
                                  "on without it")
            return
        text = " ".join(self.output.decode(errors="replace").split())
        if text:
            self.reporter.warning(f"scancel --signal=QUIT: {text}")
