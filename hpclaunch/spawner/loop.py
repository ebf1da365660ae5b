"""The event loop and teardown clock shared by static and elastic mode. No polling.

Signal handlers do nothing but let Python write the signal number to a wakeup pipe
(``signal.set_wakeup_fd``); one ``selectors`` loop sleeps on that pipe (and on whatever
other descriptors a subclass registers, with a callback as the key's data) and wakes for
SIGCHLD, SIGINT/TERM/HUP, SIGUSR1/2 and SIGQUIT. Children are reaped with ``wait4(-1,
WNOHANG)``: because the launcher is a subreaper, the same call reaps adopted orphans and, by
raising ``ECHILD``, says when the last descendant is gone; its rusage (CPU time, peak RSS)
comes with the exit status, free.

Teardown is torch elastic's TERM -> bounded wait -> KILL -> bounded wait, applied to whole
process trees (every descendant, however detached) rather than to process groups only.
Subclasses say what their children are and how termination starts; the phases, the clock,
the freeze-and-kill and the "a second signal kills at once" rule live here, once.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Any,
    Callable,
    Dict,
    FrozenSet,
    List,
    Optional,
    Sequence,
    Set,
)

from hpclaunch.machine.oom import OomWatch
from hpclaunch.reporter import DEBUG, INFO, Reporter
from hpclaunch.spawner import tree
from hpclaunch.spawner.events import Events, NoEvents, Progress
from hpclaunch.spawner.inbox import DUMP_SIGNALS, FATAL_SIGNALS, FORWARDED_SIGNALS, SignalInbox
from hpclaunch.spawner.usage import NodeUsage, WorkerUsage, launcher_clock, signal_name

if TYPE_CHECKING:
    from resource import struct_rusage

    from hpclaunch.spawner.scheduler import StepEnd

#: How long to wait for SIGKILLed processes to be reaped. A process in uninterruptible
#: sleep (D state, e.g. a hung NCCL/GPU call or NFS) cannot be reaped by SIGKILL; waiting
#: forever would hang the job, so we give up and say so.
KILL_WAIT_SECONDS = 10.0


class TreeSupervisor:
    """Phases RUNNING -> TERMINATING (SIGTERM sent, clock running) -> KILLING (SIGKILL sent)."""

    RUNNING, TERMINATING, KILLING = "running", "terminating", "killing"

    def __init__(
        self,
        inbox: SignalInbox,
        kill_timeout: float,
        reporter: Reporter,
        helpers: AbstractSet[int] = frozenset(),
        events: Events = NoEvents(),  # noqa: B008 - stateless
    ) -> None:
        self.inbox = inbox
        #: The launcher's one voice (info: what happens to the job; debug: every signal).
        self.reporter = reporter
        #: The job's record (event log, metrics); see :mod:`hpclaunch.spawner.events`.
        self.events = events
        #: The launcher's own helper processes that are its children (the watchdog, when the
        #: launcher is PID 1 of a namespace): never a worker, never a leftover, and not what
        #: "no children left" waits for.
        self.helpers: FrozenSet[int] = frozenset(helpers)
        self.kill_timeout = kill_timeout
        self.me = os.getpid()
        self.phase = self.RUNNING
        self.deadline = 0.0
        self.no_children = False
        self.killed: Set[int] = set()
        #: The SIGINT/TERM/HUP that ended the run, if that is what ended it.
        self.fatal_signal: Optional[int] = None
        #: Processes the workers left running after they themselves were done.
        self.leftovers = 0
        #: Why teardown began (the ``teardown`` event's fields), when it began, and every
        #: process (or worker process group) sent SIGTERM on the way.
        self.teardown_why: Dict[str, Any] = {}
        self.teardown_began: Optional[float] = None
        self.terminated: Set[int] = set()
        self.wrapped_up = False
        #: The kernel's OOM kill count, read now: a worker's SIGKILL is then explained or not.
        self.oom = OomWatch()
        #: What the workers used, and (node rank, host) for the line that says it.
        self.usage = NodeUsage()
        self.node = (0, "")
        #: Processes the launcher runs for itself (a ``scancel``), each with what to call
        #: with its wait status when it exits (None: given up on): waited for, but never a
        #: worker's leftover, so the teardown never signals them.
        self.own: Dict[int, Callable[[Optional[int]], None]] = {}
        #: Under a scheduler that can end the job on every node: how (see
        #: :mod:`hpclaunch.spawner.scheduler`); subclasses set it.
        self.step_end: Optional[StepEnd] = None
        self.selector = selectors.DefaultSelector()
        self.selector.register(inbox.read_fd, selectors.EVENT_READ, None)

    # ------------------------------------------------------------------ subclass hooks

    def forward(self, sig: int) -> Optional[int]:
        """Pass SIGUSR1/SIGUSR2 on to the workers (never interpreted by the launcher); returns
        to how many, or None when it is held until every worker runs."""
        raise NotImplementedError

    def worker_count(self) -> int:
        """Workers running now (for the record of a signal)."""
        return 0

    def on_fatal(self, sig: int) -> None:
        """A first SIGINT/TERM/HUP arrived while running; teardown starts right after."""
        raise NotImplementedError

    def on_dump_request(self) -> None:
        """SIGQUIT: every local rank's stack, and the job goes on."""

    def begin_terminate(self) -> None:
        """Send the first, polite signal; must call :meth:`start_clock`."""
        raise NotImplementedError

    def on_child_exit(
        self, pid: int, status: int, usage: Optional[struct_rusage] = None
    ) -> None:
        """A child was reaped (a worker, an agent, or an adopted orphan), with its rusage."""

    def finished(self) -> bool:
        return self.no_children

    def wake_timeout(self) -> Optional[float]:
        """Seconds until :meth:`on_wake` has something to do (None: nothing planned)."""
        return None

    def on_wake(self) -> None:
        """Runs after every wake-up (e.g. to show a partial line that waited long enough)."""

    def progress(self) -> Progress:
        """rank -> ``time.monotonic()`` of its latest output or heartbeat (the metrics')."""
        return {}

    def report_usage(self) -> None:
        """The job is over here: say what the workers used (one info line)."""
        if (self.usage.ends or self.usage.started) and self.reporter.enabled(INFO):
            self.reporter.info(self.usage.summary(*self.node, launcher_clock().elapsed()))

    def record_exit(
        self,
        pid: int,
        rank: int,
        local_rank: int,
        code: Optional[int],
        sig: Optional[int],
        cpu_seconds: Optional[float],
        peak_rss: Optional[int],
        consequence: bool = False,
    ) -> WorkerUsage:
        """Keep a worker's end for the usage line and record it (``worker_exit``).

        A SIGKILL the launcher did not send is checked against the kernel's OOM kill count.
        ``consequence``: the worker was being stopped already (elastic mode: torch's agent
        stopping the group after a failure), as it is whenever the launcher tears down.
        """
        oom = sig == signal.SIGKILL and pid not in self.killed and self.oom.claim()
        end = WorkerUsage(rank, code, sig, cpu_seconds, peak_rss, oom)
        self.usage.add(end)
        self.events.emit(
            "worker_exit",
            rank=rank,
            local_rank=local_rank,
            pid=pid,
            exit_code=code,
            signal=signal_name(sig) if sig is not None else None,
            cpu_seconds=cpu_seconds,
            peak_rss_bytes=peak_rss,
            oom_killed=oom,
            during_teardown=consequence or self.phase != self.RUNNING,
        )
        return end

    def close(self) -> None:
        self.wrap_up()
        self.selector.close()

    def wrap_up(self) -> None:
        """Once, at the end, before the console goes: the teardown's record, the usage line."""
        if self.wrapped_up:
            return
        self.wrapped_up = True
        if self.teardown_began is not None:
            self.events.emit(
                "teardown",
                **(self.teardown_why or {"reason": "unknown"}),
                sigterm=len(self.terminated),
                sigkill=len(self.killed),
                seconds=round(time.monotonic() - self.teardown_began, 6),
                gave_up=self.phase == self.KILLING and not self.finished(),
            )
        self.report_usage()

    def note_teardown(self, reason: str, **detail: Any) -> None:
        """Why the teardown that starts now starts (the first reason given wins)."""
        if not self.teardown_why:
            self.teardown_why = {"reason": reason, **detail}

    # ------------------------------------------------------------------ events

    def handle_signals(self, received: List[int]) -> None:
        for sig in received:
            name = signal_name(sig) if sig in FORWARDED_SIGNALS or sig in FATAL_SIGNALS else ""
            if sig in FORWARDED_SIGNALS:
                if self.phase == self.RUNNING:
                    count = self.forward(sig)
                    if count is None:
                        self.events.emit("signal", signal=name, action="held until all start")
                    else:
                        self.events.emit("signal", signal=name, action="forwarded",
                                         workers=count)
                else:
                    self.events.emit("signal", signal=name, action="ignored: tearing down")
            elif sig in FATAL_SIGNALS:
                if self.step_end is not None and self.step_end.is_echo(sig):
                    continue  # our own request to end the step reached this task too
                if self.phase == self.RUNNING:
                    self.events.emit("signal", signal=name, action="teardown",
                                     workers=self.worker_count())
                    self.note_teardown("signal", signal=name)
                    self.on_fatal(sig)
                    self.begin_terminate()
                elif self.phase == self.TERMINATING:
                    self.events.emit("signal", signal=name, action="kill")
                    self.reporter.info(f"got {name} again: killing now")
                    self.begin_kill()
                else:
                    self.events.emit("signal", signal=name, action="ignored: killing already")
            elif sig in DUMP_SIGNALS:
                self.on_dump_request()
        self.after_signals()

    def after_signals(self) -> None:
        self.reap()  # once for any number of SIGCHLDs

    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self.no_children = True
                return
            if pid == 0:
                self.no_children = self.only_helpers_left()
                return
            if pid in self.helpers:
                self.helpers = self.helpers - {pid}
                continue
            if pid in self.own:
                self.own.pop(pid)(status)
                continue
            self.on_child_exit(pid, status, usage)

    def adopt_helper(self, pid: int) -> None:
        """A short-lived tool the launcher started (py-spy, scancel): never a worker or a
        leftover, and not what "no children left" waits for."""
        self.helpers = self.helpers | {pid}

    def only_helpers_left(self) -> bool:
        """Children remain; True if they are all our own helpers (as PID 1: the watchdog)."""
        return bool(self.helpers) and tree.direct_children(self.me) <= self.helpers

    def descendants(self) -> List[int]:
        """Every process the workers started that is still here (our helpers left out)."""
        return tree.descendants(self.me, self.helpers.union(self.own))

    def signal_strays(self, sig: int, already: AbstractSet[int] = frozenset()) -> List[int]:
        """Send ``sig`` to every descendant outside the process groups in ``already``."""
        sent = []
        for pid in self.descendants():
            try:
                if os.getpgid(pid) in already:
                    continue
            except OSError:
                continue
            if tree.send(pid, sig):
                sent.append(pid)
        self.note_sent(sig, "process(es) outside the workers' groups", sent)
        return sent

    def note_sent(self, sig: int, what: str, pids: Sequence[int]) -> None:
        """Every signal the launcher sends is a debug line (built only when debug is on): one
        line per batch, said by whoever sends it (``tree.send`` itself stays silent)."""
        if sig == signal.SIGTERM:
            self.terminated.update(pids)
        if pids and self.reporter.enabled(DEBUG):
            shown = " ".join(str(pid) for pid in pids)
            self.reporter.debug(f"sent {signal.Signals(sig).name} to {len(pids)} {what}: {shown}")

    def no_children_now(self) -> bool:
        """Reap what is ready; True when no descendant at all is left."""
        self.reap()
        return self.no_children

    # ------------------------------------------------------------------ teardown

    def start_clock(self, extra: float = 0.0) -> None:
        if self.teardown_began is None:
            self.teardown_began = time.monotonic()
        self.phase = self.TERMINATING
        self.deadline = time.monotonic() + self.kill_timeout + extra

    def terminate_descendants(self) -> None:
        self.signal_strays(signal.SIGTERM)

    def begin_kill(self) -> None:
        self.phase = self.KILLING
        self.deadline = time.monotonic() + KILL_WAIT_SECONDS
        for _ in range(10):  # again: a process may fork between our walk and its freeze
            fresh = [p for p in self.descendants() if p not in self.killed]
            if not fresh:
                break
            tree.freeze_and_kill(fresh)
            self.note_sent(signal.SIGKILL, "process(es), each after SIGSTOP", fresh)
            self.killed.update(fresh)
        if self.killed:
            self.reporter.warning(f"killed {len(self.killed)} process(es) that outlived SIGTERM")

    def give_up(self) -> None:
        """The wait after SIGKILL is over: stop waiting for anything still here."""
        for pid, done in list(self.own.items()):  # a scancel stuck on a dead controller
            tree.send(pid, signal.SIGKILL)
            done(None)
        self.own.clear()
        if self.descendants():
            self.reporter.warning(
                "some processes did not die after SIGKILL (uninterruptible sleep?); giving "
                "up on them"
            )

    # ------------------------------------------------------------------ the end of the job

    def end_step(self, failed_rank: Optional[int]) -> None:
        """A worker here failed for good (our teardown has begun): ask the scheduler that
        started the launchers to end the job on every node, where it can."""
        if self.step_end is None:
            return
        pid = self.step_end.request(failed_rank)
        if pid is not None:
            self.own[pid] = self.step_end.finished
            self.no_children = False

    def done(self) -> bool:
        """:meth:`finished`, and no SIGTERM of our own request to end the step still on its
        way: Slurm may deliver it after scancel returns, and after the loop it would find
        this process without its handlers (the default action: death, exit 143)."""
        if not self.finished():
            return False
        return self.step_end is None or self.step_end.echo_wait() is None

    def ended_by(self, sig: int) -> str:
        """Who sent a fatal signal, for the "got SIGTERM" line (under Slurm: the step's end)."""
        return self.step_end.ended(sig) if self.step_end is not None else ""

    def loop(self) -> None:
        try:
            self.reap()
            while not self.done():
                timeout = None
                if self.phase != self.RUNNING:
                    timeout = max(0.0, self.deadline - time.monotonic())
                echo = self.step_end.echo_wait() if self.step_end is not None else None
                for wake in (self.wake_timeout(), self.events.next_timeout(), echo):
                    if wake is not None and (timeout is None or wake < timeout):
                        timeout = wake
                for key, _ in self.selector.select(timeout):
                    if key.data is not None:
                        key.data(key.fd)
                self.on_wake()
                self.events.on_wake(self.progress)
                self.handle_signals(self.inbox.drain())
                if self.done():
                    break
                if self.phase != self.RUNNING and time.monotonic() >= self.deadline:
                    if self.phase == self.TERMINATING:
                        self.begin_kill()
                    else:
                        self.give_up()
                        return
        finally:
            self.close()
