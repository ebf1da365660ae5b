"""Never a silent hang: what every launch holds for SIGQUIT and ``--stall_timeout``.

* :class:`WatchFiles` -- made before the first worker, named in each worker's environment:
  its stack-dump pipe (unless ``--no_stack_dumps``) and its heartbeat file (with
  ``--stall_timeout``);
* :class:`HangWatch` -- what the supervisor (static or elastic) calls from its event loop:
  SIGQUIT dumps every local rank's stack and the job goes on; a stall is reported, Slurm is
  asked to have the step's other launchers dump too, every local rank is dumped, and then
  the supervisor tears the job down and the launcher exits :data:`STALL_EXIT_STATUS`.

How stacks are taken and shown is :mod:`hpclaunch.spawner.stacks`; how a stall is found,
:mod:`hpclaunch.spawner.stall`. Both are imported only when needed (a dump, a stall
timeout), so a plain launch pays for this module alone: one pipe per worker, registered
with the event loop and silent until a dump.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional

from hpclaunch.model.plan import LaunchPlan
from hpclaunch.options import format_ranks
from hpclaunch.reporter import Reporter
from hpclaunch.spawner.events import Events

if TYPE_CHECKING:
    from hpclaunch.spawner.stacks import DumpTarget, StackDumper
    from hpclaunch.spawner.stall import Heartbeats, Stall, StallWatch, StepSignal

#: The launcher's exit status after a stall (GNU timeout's "timed out").
STALL_EXIT_STATUS = 124
#: SIGRTMIN + this is the dump signal (``kill -s SIGRTMIN+7 <pid>`` dumps one worker by hand).
#: A real-time signal: SIGUSR1 is Lightning's requeue signal and NCCL's, SIGUSR2 submitit's
#: and LSF's, and SIGQUIT's default would core-dump a worker.
DUMP_SIGNAL_OFFSET = 7
#: The folder put first on workers' PYTHONPATH: it holds only the sitecustomize.
WORKER_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_site")
#: ``"<signal> <path of the pipe>[ keep-empty]"`` for the sitecustomize, which removes it
#: (``keep-empty``: the user's PYTHONPATH is set and empty; it stays so).
STACKS_VAR = "HPCLAUNCH_STACKS"
#: The variable naming each worker's heartbeat file (set when --stall_timeout is on).
HEARTBEAT_VAR = "HPCLAUNCH_HEARTBEAT_FILE"


def dump_signal() -> int:
    """The workers' dump signal (SIGRTMIN is the C library's, so it is read at run time)."""
    return int(signal.SIGRTMIN) + DUMP_SIGNAL_OFFSET


# --------------------------------------------------------------------------- the files


class DumpPipes:
    """One pipe per local rank (slot) for the dump handler to write to, read by the loop.

    The worker opens it by ``/proc/<launcher>/fd/<n>``: nothing is created in the file
    system, and static and elastic workers (the latter started by torch's agent, which
    closes inherited descriptors) reach it the same way. The launcher's end is opened
    read-write (through ``/proc/self/fd``), so the pipe always has a writer: no end-of-file
    however workers come and go, and the path stays valid for a restarted elastic worker.
    """

    def __init__(self, slots: int) -> None:
        self.fds: List[int] = []
        self.me = os.getpid()
        try:
            for _ in range(slots):
                self.fds.append(_read_write_pipe())
        except BaseException:
            self.close()
            raise

    def worker_env(self, slot: int, env: Mapping[str, str]) -> Dict[str, str]:
        """What a worker's environment gets so that its Python registers the handler."""
        spec = f"{dump_signal()} /proc/{self.me}/fd/{self.fds[slot]}"
        user_path = env.get("PYTHONPATH")
        if user_path == "":
            spec += " keep-empty"
        path = WORKER_SITE + os.pathsep + user_path if user_path else WORKER_SITE
        return {STACKS_VAR: spec, "PYTHONPATH": path}

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _read_write_pipe() -> int:
    read_end, write_end = os.pipe()
    try:
        return os.open(f"/proc/self/fd/{read_end}", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(read_end)
        os.close(write_end)


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
                from hpclaunch.spawner.stall import Heartbeats

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


# --------------------------------------------------------------------------- the watch


class HangWatch:
    """SIGQUIT's dumps and a stall's course, over the workers' :class:`WatchFiles`.

    The supervisor gives it its selector, ``targets()`` (its live workers, as
    :class:`~hpclaunch.spawner.stacks.DumpTarget`), ``output`` (the relay's progress stamps,
    or an empty mapping) and ``adopt(pid)`` (a helper child of the launcher's own: py-spy,
    scancel); it calls :meth:`on_sigquit`, :meth:`wake_timeout` and :meth:`on_wake` from
    its loop, reads :attr:`stalled`, and calls :meth:`close` at the end (which closes the
    files too).
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
            from hpclaunch.spawner.stall import StallWatch

            self.watch = StallWatch(plan.launch.stall_timeout, output, files.heartbeats)
        self._dumper: Optional[StackDumper] = None
        if files.pipes is not None:
            for fd in files.pipes.fds:
                selector.register(fd, selectors.EVENT_READ, self._on_pipe)
        #: The stall, once found; the teardown waits until its dumps are out.
        self.stalled: Optional[Stall] = None
        self.stall_over = False
        self.scancel: Optional[StepSignal] = None

    def progress(self, output: Mapping[int, float]) -> Dict[int, float]:
        """rank -> the latest of its output (``output``) and heartbeat stamps (the metrics'
        view; heartbeats are read only when ``--stall_timeout`` watches them)."""
        seen = dict(output)
        if self.watch is not None:
            for spec in self.plan.workers:
                beat = self.watch.heartbeats.seen.get(spec.local_rank)
                if beat is not None and beat > seen.get(spec.rank, float("-inf")):
                    seen[spec.rank] = beat
        return seen

    @property
    def dumper(self) -> StackDumper:
        """Made at the first dump: a launch without one never imports it."""
        if self._dumper is None:
            from hpclaunch.spawner.stacks import StackDumper

            prefixed = self.plan.prefix_output
            self._dumper = StackDumper(
                self.selector,
                self.files.pipes,
                self.reporter.sink,
                lambda rank: f"[rank{rank}]: " if prefixed else "",
                self.find,
                self.adopt,
                dict(os.environ),
            )
        return self._dumper

    def _on_pipe(self, fd: int) -> None:
        self.dumper.on_readable(fd)

    def find(self, slot: int) -> Optional[DumpTarget]:
        return next((t for t in self.targets() if t.slot == slot), None)

    @property
    def busy(self) -> bool:
        """Dumps (or the Slurm request) still under way."""
        dumping = self._dumper is not None and self._dumper.busy
        return dumping or (self.scancel is not None and self.scancel.waiting)

    # ------------------------------------------------------------------ SIGQUIT

    def on_sigquit(self) -> None:
        """Every local rank's stack; the job goes on. Once stalled, the Slurm step's QUIT that
        the stall asked for comes back to this launcher too: that is noted, nothing more."""
        if self.stalled is not None:
            if self.scancel is not None:
                self.scancel.echo()
            return
        if self.busy:
            self.reporter.info("got SIGQUIT: a dump is still under way; ignored")
            return
        targets = self.targets()
        self.reporter.info(f"got SIGQUIT: dumping the stacks of {len(targets)} worker(s)")
        self.events.emit("dump", ranks=[t.rank for t in targets], reason="sigquit")
        self.dumper.request("on SIGQUIT", targets, {})

    # ------------------------------------------------------------------ the loop

    def wake_timeout(self, running: bool) -> Optional[float]:
        """Called at every turn of the loop (every read of output): a few attribute tests
        unless a dump, a stall watch or scancel is under way."""
        due: List[float] = []
        if self._dumper is not None:
            dumps = self._dumper.next_timeout()
            if dumps is not None:
                due.append(dumps)
        if self.watch is not None and running and self.stalled is None:
            due.append(self.watch.next_timeout(time.monotonic()))
        if self.scancel is not None and self.scancel.waiting:
            due.append(max(0.0, self.scancel.deadline - time.monotonic()))
        return min(due) if due else None

    def on_wake(self, running: bool, held_back: bool) -> bool:
        """Runs after each turn of the loop; True exactly once: the stall's dumps are done,
        tear down. The workers are looked at only when the watch is due, never per read.

        ``held_back``: the console holds the workers' output back (not their stall).
        """
        if self._dumper is not None:
            self._dumper.on_wake()
        if self.scancel is not None:
            self.scancel.on_wake()
        if self.stalled is None and self.watch is not None and running:
            now = time.monotonic()
            if now >= self.watch.due:
                stall = self.watch.check(self.targets(), now, held_back)
                if stall is not None:
                    self._on_stall(stall)
        if self.stalled is None or self.stall_over or self.busy:
            return False
        self.stall_over = True
        return True

    def _on_stall(self, stall: Stall) -> None:
        from hpclaunch.spawner.scheduler import slurm_step
        from hpclaunch.spawner.stall import StepSignal

        assert self.watch is not None
        self.stalled = stall
        never = f" ({format_ranks(set(stall.silent))} never made any)" if stall.silent else ""
        self.reporter.error(
            f"stalled: rank(s) {format_ranks(set(stall.ranks))} on {self.plan.host} made no "
            f"progress (output or heartbeat) for {stall.quiet:.1f} s (--stall_timeout "
            f"{self.watch.timeout:g}){never}: dumping every local rank's stack, then stopping "
            "the job"
        )
        self.events.emit("stall", ranks=list(stall.ranks), quiet_seconds=round(stall.quiet, 3))
        step = slurm_step(self.plan.world)
        if step is not None:  # first, so the other nodes dump while this one does
            self.scancel = StepSignal(step, self.selector, self.reporter, self.adopt)
        targets = self.targets()
        self.events.emit("dump", ranks=[t.rank for t in targets], reason="stall")
        self.dumper.request("stalled", targets, self.watch.cpu)

    # ------------------------------------------------------------------ the end

    def outcome_error(self) -> str:
        """The failure summary's line for a stall ("" when there was none)."""
        stall = self.stalled
        if stall is None or self.watch is None:
            return ""
        return (
            f"stalled: rank(s) {format_ranks(set(stall.ranks))} on {self.plan.host} made no "
            f"progress for {stall.quiet:.1f} s (--stall_timeout {self.watch.timeout:g}); "
            f"their stacks are above; the job was stopped (exit {STALL_EXIT_STATUS})"
        )

    def close(self) -> None:
        if self._dumper is not None:
            self._dumper.close()
        if self.scancel is not None:
            self.scancel.end(timed_out=False)
        if self.files.pipes is not None:
            for fd in self.files.pipes.fds:
                self.selector.unregister(fd)
        self.files.close()
