"""Never a silent hang: stall detection, and every rank's stack on SIGQUIT and on a stall.

A rank makes *progress* when it writes to stdout or stderr (the relay stamps
``OutputRelay.progress[rank]`` on the read it makes anyway: no syscall per line) or touches
its heartbeat file (``HPCLAUNCH_HEARTBEAT_FILE``, looked at no more than once a second). A
rank *counts* once it has made progress once. When every counting rank of this node has been
quiet for ``--stall_timeout`` seconds, :class:`HangWatch` reports the stall, asks Slurm to make
the step's other launchers dump too (``scancel --signal=QUIT <job>.<step>``: the launchers
are the step's tasks), dumps every local rank's stack with its process state
(:mod:`hpclaunch.spawner.stacks`), and then lets the supervisor tear the job down; the
launcher exits :data:`STALL_EXIT_STATUS`.

No polling while progress flows: the event loop wakes for the watch once half the timeout
after the latest progress it knows of (then it takes each worker's CPU time, so the report
can say how much CPU the quiet half used), and once at the deadline; output in between
costs nothing. A console that holds the workers back (back-pressure) is not a stall.

The heartbeat file is an unnamed file of the launcher's (``O_TMPFILE``), named to the worker
as ``/proc/<launcher>/fd/<n>``: ``touch``, ``os.utime`` or ``Path.touch`` on that path update
it, the launcher reads its mtime with one ``fstat``, and nothing is ever left on disk.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from hpclaunch.model.plan import LaunchPlan
from hpclaunch.options import format_ranks
from hpclaunch.reporter import Reporter
from hpclaunch.spawner.events import Events
from hpclaunch.spawner.stacks import (
    DumpPipes,
    DumpTarget,
    StackDumper,
    read_cpu,
    start_helper,
)

#: The launcher's exit status after a stall (GNU timeout's "timed out").
STALL_EXIT_STATUS = 124
#: The variable naming each worker's heartbeat file (set when --stall_timeout is on).
HEARTBEAT_VAR = "HPCLAUNCH_HEARTBEAT_FILE"
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


# --------------------------------------------------------------------------- Slurm


def slurm_step(plan: LaunchPlan) -> Optional[str]:
    """``<job>.<step>`` of a multi-node Slurm step this launcher is a task of, else None."""
    if plan.adapter != "slurm" or plan.world.num_nodes < 2:
        return None
    job, _, step = plan.world.run_id.partition(".")
    return plan.world.run_id if job.isdigit() and step.isdigit() else None


# --------------------------------------------------------------------------- the glue


class WatchFiles:
    """What each worker's environment names, made before the first worker starts: its dump
    pipe (unless ``--no_stack_dumps``) and its heartbeat file (with ``--stall_timeout``)."""

    def __init__(self, plan: LaunchPlan, env: Mapping[str, str]) -> None:
        self.pipes: Optional[DumpPipes] = None
        self.heartbeats: Optional[Heartbeats] = None
        slots = len(plan.workers)
        try:
            if plan.launch.stack_dumps:
                self.pipes = DumpPipes(slots)
            if plan.launch.stall_timeout:
                self.heartbeats = Heartbeats(slots, env)
        except BaseException:
            self.close()
            raise

    def worker_env(self, slot: int, env: Mapping[str, str]) -> Dict[str, str]:
        """The variables one worker (local rank ``slot``) gets besides ``env``."""
        added: Dict[str, str] = {}
        if self.pipes is not None:
            added.update(self.pipes.worker_env(slot, env))
        if self.heartbeats is not None:
            added[HEARTBEAT_VAR] = self.heartbeats.path(slot)
        return added

    def close(self) -> None:
        for owner in (self.pipes, self.heartbeats):
            if owner is not None:
                owner.close()


class HangWatch:
    """What a supervisor holds for SIGQUIT and --stall_timeout: the watch and the dumper over
    the workers' :class:`WatchFiles`, and a stall's course (report, Slurm, dumps, teardown).

    The supervisor gives it its selector, ``targets()`` (its live workers), ``output`` (the
    relay's stamps, or an empty mapping) and ``adopt(pid)`` (a helper child of the
    launcher's own); it calls :meth:`on_sigquit`, :meth:`wake_timeout` and :meth:`on_wake`
    from its loop, and :meth:`close` at the end (which closes the files too).
    """

    def __init__(
        self,
        plan: LaunchPlan,
        files: WatchFiles,
        selector: selectors.BaseSelector,
        reporter: Reporter,
        events: Events,
        targets: Callable[[], List[DumpTarget]],
        output: Mapping[int, float],
        adopt: Callable[[int], None],
    ) -> None:
        self.plan = plan
        self.files = files
        self.selector = selector
        self.reporter = reporter
        self.events = events
        self.targets = targets
        self.adopt = adopt
        self.watch: Optional[StallWatch] = None
        if files.heartbeats is not None and plan.launch.stall_timeout:
            self.watch = StallWatch(plan.launch.stall_timeout, output, files.heartbeats)
        prefixed = plan.prefix_output
        self.dumper = StackDumper(
            selector,
            files.pipes,
            reporter.sink,
            lambda rank: f"[rank{rank}]: " if prefixed else "",
            self.find,
            adopt,
            dict(os.environ),
        )
        self.stalled: Optional[Stall] = None
        #: Set once the stall's dumps are done and the teardown may begin.
        self.stall_over = False
        self.scancel: Optional[Tuple[int, int, float]] = None  # pid, fd, deadline
        self.scancel_output = b""

    # ------------------------------------------------------------------ workers

    def find(self, slot: int) -> Optional[DumpTarget]:
        return next((t for t in self.targets() if t.slot == slot), None)

    # ------------------------------------------------------------------ SIGQUIT

    def on_sigquit(self) -> None:
        """Every local rank's stack; the job goes on. Ignored during a stall's own dumps (a
        Slurm step's QUIT reaches this launcher too)."""
        if self.stalled is not None:
            return
        targets = self.targets()
        if self.dumper.busy:
            self.reporter.info("got SIGQUIT: a dump is still under way; ignored")
            return
        self.reporter.info(f"got SIGQUIT: dumping the stacks of {len(targets)} worker(s)")
        self.events.emit("dump", ranks=[t.rank for t in targets], reason="sigquit")
        self.dumper.request("on SIGQUIT", targets, {})

    # ------------------------------------------------------------------ the loop

    def wake_timeout(self, running: bool) -> Optional[float]:
        now = time.monotonic()
        due = [self.dumper.next_timeout()]
        if self.watch is not None and running and self.stalled is None:
            due.append(self.watch.next_timeout(now))
        if self.scancel is not None:
            due.append(max(0.0, self.scancel[2] - now))
        known = [d for d in due if d is not None]
        return min(known) if known else None

    def on_wake(self, running: bool, held_back: bool) -> bool:
        """Runs after each wake-up; True exactly once: the stall's dumps are done, tear down."""
        self.dumper.on_wake()
        if self.scancel is not None and time.monotonic() >= self.scancel[2]:
            self._end_scancel(timed_out=True)
        if self.stalled is None and self.watch is not None and running:
            stall = self.watch.check(self.targets(), time.monotonic(), held_back)
            if stall is not None:
                self._on_stall(stall)
        if self.stalled is None or self.stall_over or self.dumper.busy or self.scancel is not None:
            return False
        self.stall_over = True
        return True

    def _on_stall(self, stall: Stall) -> None:
        assert self.watch is not None
        self.stalled = stall
        timeout = self.watch.timeout
        never = (f" ({format_ranks(set(stall.silent))} never made any)" if stall.silent else "")
        self.reporter.error(
            f"stalled: rank(s) {format_ranks(set(stall.ranks))} on {self.plan.host} made no "
            f"progress (output or heartbeat) for {stall.quiet:.1f} s (--stall_timeout "
            f"{timeout:g}){never}: dumping every local rank's stack, then stopping the job"
        )
        self.events.emit("stall", ranks=list(stall.ranks), quiet_seconds=round(stall.quiet, 3))
        step = slurm_step(self.plan)
        if step is not None:
            self._start_scancel(step)
        targets = self.targets()
        self.events.emit("dump", ranks=[t.rank for t in targets], reason="stall")
        self.dumper.request("stalled", targets, self.watch.cpu)

    # ------------------------------------------------------------------ Slurm

    def _start_scancel(self, step: str) -> None:
        """``scancel --signal=QUIT <step>``: every launcher of the step dumps its ranks."""
        from hpclaunch.fast import which

        scancel = which("scancel")
        if scancel is None:
            self.reporter.warning("scancel is not on PATH: the other nodes' stacks are not "
                                  f"dumped (run 'scancel --signal=QUIT {step}' yourself)")
            return
        self.reporter.info(f"asking Slurm to dump every node's stacks: scancel "
                           f"--signal=QUIT {step}")
        try:
            pid, fd = start_helper([scancel, "--signal=QUIT", step], self.dumper.env)
        except OSError as exc:
            self.reporter.warning(f"cannot run scancel: {exc}")
            return
        self.adopt(pid)
        self.scancel = (pid, fd, time.monotonic() + SCANCEL_WAIT_SECONDS)
        self.selector.register(fd, selectors.EVENT_READ, self._scancel_output)

    def _scancel_output(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            if not data:
                self._end_scancel(timed_out=False)
                return
            self.scancel_output = (self.scancel_output + data)[-4096:]

    def _end_scancel(self, timed_out: bool) -> None:
        if self.scancel is None:
            return
        pid, fd, _ = self.scancel
        self.scancel = None
        self.selector.unregister(fd)
        os.close(fd)
        text = " ".join(self.scancel_output.decode(errors="replace").split())
        if timed_out:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reporter.warning(f"scancel took more than {SCANCEL_WAIT_SECONDS:g} s; "
                                  "going on without it")
        elif text:  # it says nothing when it succeeds
            self.reporter.warning(f"scancel --signal=QUIT: {text}")

    # ------------------------------------------------------------------ the end

    def outcome_error(self) -> str:
        """The failure summary's line for a stall ("" when there was none)."""
        stall = self.stalled
        if stall is None:
            return ""
        assert self.watch is not None
        return (
            f"stalled: rank(s) {format_ranks(set(stall.ranks))} on {self.plan.host} made no "
            f"progress for {stall.quiet:.1f} s (--stall_timeout {self.watch.timeout:g}); "
            f"their stacks are above; the job was stopped (exit {STALL_EXIT_STATUS})"
        )

    def close(self) -> None:
        self.dumper.close()
        if self.scancel is not None:
            self._end_scancel(timed_out=False)
        self.files.close()
