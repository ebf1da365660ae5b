"""The static-mode supervisor: start this node's workers and see them through to an Outcome.

Workers are forked and exec'd directly (no shell, no Python middleman), each in its own
session with ``PR_SET_PDEATHSIG``; fail-fast, forwarding and teardown are the shared event
loop's (:mod:`hpclaunch.spawner.loop`).
"""

from __future__ import annotations

import os
import selectors
import signal
from typing import AbstractSet, Dict, List, Mapping, NoReturn, Optional

from hpclaunch.model.plan import LaunchPlan, RankSpec
from hpclaunch.reporter import Reporter
from hpclaunch.spawner import tree
from hpclaunch.spawner.child import become_worker
from hpclaunch.spawner.events import Events
from hpclaunch.spawner.guard import LaunchGuard
from hpclaunch.spawner.inbox import (
    FATAL_SIGNALS,
    fork_with_signals_blocked,
    reset_in_child,
    set_mask,
)
from hpclaunch.spawner.logs import LogFile
from hpclaunch.spawner.loop import TreeSupervisor
from hpclaunch.spawner.output import wiring
from hpclaunch.spawner.output.console import Console
from hpclaunch.spawner.output.relay import OutputRelay
from hpclaunch.spawner.report import Outcome, WorkerFailure
from hpclaunch.spawner.scheduler import step_end_for


def spawn_worker(
    spec: RankSpec,
    env: Mapping[str, str],
    stdout_fd: Optional[int],
    stderr_fd: Optional[int],
    status_fd: int,
) -> tuple[int, str]:
    """fork + exec one worker in its own session, dying with the launcher (pdeathsig).

    Returns at once with ``(pid, "")``: a child that cannot exec writes ``"<pid> <why>"`` to
    ``status_fd`` (the write end of the supervisor's exec-status pipe) and exits 127, and
    the event loop collects it, so all workers are forked before any exec status is waited
    for. Handled signals are blocked across the fork so a signal can never run the
    launcher's handler in the child; the child restores default dispositions before
    unblocking.
    """
    parent = os.getpid()
    pid, old_mask = fork_with_signals_blocked(())
    if pid == 0:
        _child(spec, env, parent, old_mask, stdout_fd, stderr_fd, status_fd)
    set_mask(old_mask)
    return pid, ""


def _child(
    spec: RankSpec,
    env: Mapping[str, str],
    parent: int,
    old_mask: AbstractSet[int],
    stdout_fd: Optional[int],
    stderr_fd: Optional[int],
    status_fd: int,
) -> NoReturn:
    """Between fork and exec: only what must run in the child, then the shared setup."""
    try:
        reset_in_child()
        set_mask(old_mask)
        become_worker(
            spec.argv,
            env,
            parent,
            cpus=spec.cpus,
            mem_node=spec.mem_node,  # --numa_binding; inherited across exec
            stdout_fd=stdout_fd,
            stderr_fd=stderr_fd,
            keep_fd=status_fd,
            new_session=True,
        )
    except BaseException as exc:  # noqa: B036 - must never return into the launcher
        try:
            why = " ".join(f"cannot start {spec.argv[0]!r}: {exc}".split())[:3000]
            os.write(status_fd, f"{os.getpid()} {why}\n".encode(errors="replace"))
        finally:
            os._exit(127)
    os._exit(127)


#: Workers reported to the watchdog per write while starting (one write wakes it once).
TRACK_BATCH = 64


class Supervisor(TreeSupervisor):
    """Runs one plan to an :class:`Outcome`; owns every process it starts.

    The rule it holds: exit 0 only when every planned rank was started and exited 0.
    """

    def __init__(
        self,
        plan: LaunchPlan,
        base_env: Mapping[str, str],
        log_files: Mapping[str, LogFile],
        guard: LaunchGuard,
        reporter: Reporter,
        console: Console,
        events: Events,
    ) -> None:
        super().__init__(guard.inbox, plan.launch.kill_timeout, reporter, guard.helpers, events)
        self.plan = plan
        self.base_env = base_env
        self.tree_token = guard.token
        self.log_files = log_files
        self.log_fds = {path: log.fd for path, log in log_files.items()}
        self.watchdog = guard.watchdog
        self.live: Dict[int, RankSpec] = {}
        #: Ranks forked so far, and ranks that exited 0: success needs both to be all of them.
        self.started = 0
        self.succeeded = 0
        #: Workers forked but not yet reported to the watchdog (see :data:`TRACK_BATCH`).
        self.untracked: List[int] = []
        self.exec_errors: Dict[int, str] = {}
        self.failure: Optional[WorkerFailure] = None
        self.step_end = step_end_for(plan.world, plan.launch, reporter, events)
        self.console = console
        self.console.attach(self.selector)
        self.relay = OutputRelay(self.selector, self.console)
        self.layout = wiring.Layout()
        # One pipe for every child's exec status, read by the loop: a child that cannot exec
        # writes one "<pid> <why>" line (atomic: shorter than PIPE_BUF) and exits 127.
        self.status_read, self.status_write = _pipe_above_stdio()
        os.set_blocking(self.status_read, False)
        self.selector.register(self.status_read, selectors.EVENT_READ, self.read_exec_status)

    # ------------------------------------------------------------------ spawning

    def start_all(self) -> None:
        """Fork every worker first; exec statuses and exits arrive in the event loop."""
        try:
            for spec in self.plan.workers:
                if self.phase != self.RUNNING:
                    return  # a fatal signal or a failure arrived while starting: no more
                self.start_one(spec)
                if len(self.untracked) >= TRACK_BATCH:
                    self.track_started()
                self.handle_signals(self.inbox.drain())
        finally:
            self.track_started()
            os.close(self.status_write)  # every child has its copy: EOF once all have exec'd
            self.status_write = -1
        self.check_all_done()

    def start_one(self, spec: RankSpec) -> None:
        env = dict(self.base_env)
        env.update(spec.env)
        env[tree.TREE_TOKEN_VAR] = self.tree_token
        pid, error = self.spawn_with_output(spec, env)
        self.no_children = False
        self.live[pid] = spec
        self.started += 1
        self.untracked.append(pid)
        if error:
            self.exec_errors[pid] = error

    def track_started(self) -> None:
        """Tell the watchdog the new workers' process groups, in one write."""
        self.watchdog.track_many(self.untracked)
        self.untracked = []

    def spawn_with_output(self, spec: RankSpec, env: Mapping[str, str]) -> tuple[int, str]:
        """Per-rank log file, else a pty or pipe to the relay, else the console as it is."""
        status = self.status_write

        def spawn(
            spec: RankSpec, env: Mapping[str, str], out: Optional[int], err: Optional[int]
        ) -> tuple[int, str]:
            return spawn_worker(spec, env, out, err, status)

        return wiring.spawn_with_output(
            spawn, spec, env, self.plan.output, self.plan.prefix_output, self.log_fds,
            self.layout, self.relay,
        )

    def read_exec_status(self, fd: int) -> None:
        """Collect "<pid> <why>" lines from children that could not exec."""
        data = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                if self.status_read >= 0 and self.status_write < 0:
                    self.selector.unregister(self.status_read)  # every child has exec'd
                    os.close(self.status_read)
                    self.status_read = -1
                break
            data += chunk
        for line in data.decode(errors="replace").splitlines():
            pid, _, why = line.partition(" ")
            if pid.isdigit():
                self.exec_errors[int(pid)] = why

    # ------------------------------------------------------------------ loop hooks

    def forward(self, sig: int) -> None:
        for pid in self.live:
            tree.send(pid, sig)
        self.note_sent(sig, "worker(s)", list(self.live))
        self.reporter.info(f"forwarded {signal.Signals(sig).name} to {len(self.live)} worker(s)")

    def on_fatal(self, sig: int) -> None:
        if self.failure is None:
            self.fatal_signal = sig
        self.reporter.info(
            f"got {signal.Signals(sig).name}{self.ended_by(sig)}: stopping {len(self.live)} "
            "worker(s)"
        )

    def on_child_exit(self, pid: int, status: int) -> None:
        spec = self.live.pop(pid, None)
        if spec is not None:  # else an adopted orphan (we are its subreaper)
            self.on_worker_exit(pid, spec, status)

    def on_worker_exit(self, pid: int, spec: RankSpec, status: int) -> None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        if code == 0:
            self.succeeded += 1
            self.check_all_done()
            return
        if self.phase != self.RUNNING or self.failure is not None:
            return  # a consequence of our own teardown, not a cause
        if code == 127 and self.status_read >= 0:
            self.read_exec_status(self.status_read)  # it wrote why before it exited
        log_path = spec.log_path
        if log_path is not None and log_path in self.log_files:
            log_path = self.log_files[log_path].path  # the name the log really got
        self.failure = WorkerFailure(
            rank=spec.rank,
            local_rank=spec.local_rank,
            host=self.plan.host,
            pid=pid,
            exit_code=code,
            signal=sig,
            log_path=log_path,
            detail=self.exec_errors.get(pid, ""),
        )
        self.reporter.info(f"{self.failure.describe()}: stopping the other workers")
        self.begin_terminate()
        self.end_step(spec.rank)

    def check_all_done(self) -> None:
        """Every planned rank started and none is left: stop what the workers left running.

        Only then: a worker that exits 0 early (leaving a daemon) while later ranks are
        still being started is not the end of the job.
        """
        if self.live or self.started < len(self.plan.workers) or self.phase != self.RUNNING:
            return
        if not self.no_children_now():
            self.cleanup_leftovers()

    def cleanup_leftovers(self) -> None:
        """Every worker succeeded but left descendants (daemons): stop them too."""
        self.start_clock()
        self.leftovers = len(self.signal_strays(signal.SIGTERM))
        self.reporter.warning(
            f"all workers exited 0 but {self.leftovers} process(es) they started are still "
            "running: stopping them"
        )

    def begin_terminate(self) -> None:
        """SIGTERM to each worker's process group at once, then to strays found by a walk.

        The groups are known (each worker leads its own session), so every worker has its
        signal before any /proc walk; the walk then finds what left the groups (setsid'd
        daemons, children of workers already gone).
        """
        self.start_clock()
        groups = list(self.live)
        for pgid in groups:
            tree.send_group(pgid, signal.SIGTERM)
        self.note_sent(signal.SIGTERM, "worker process group(s)", groups)
        self.signal_strays(signal.SIGTERM, already=frozenset(groups))

    def finished(self) -> bool:
        return not self.live and self.no_children

    def wake_timeout(self) -> Optional[float]:
        return self.relay.next_timeout()

    def on_wake(self) -> None:
        self.relay.show_idle()

    def close(self) -> None:
        self.relay.drain_all()
        self.console.detach()
        # After a fatal signal the user wants out now: what the console cannot take at
        # once is dropped. Otherwise wait while it makes progress, or until a signal.
        if self.fatal_signal is not None:
            self.console.stall_seconds = 0.0
        self.console.flush(self.inbox.read_fd, self.fatal_signal_arrived)
        for fd in (self.status_read, self.status_write):
            if fd >= 0:
                os.close(fd)
        self.status_read = self.status_write = -1
        super().close()

    def fatal_signal_arrived(self) -> bool:
        return any(sig in FATAL_SIGNALS for sig in self.inbox.drain())

    def outcome(self) -> Outcome:
        if self.failure is not None:
            code = self.failure.status
        elif self.fatal_signal is not None:
            code = 128 + self.fatal_signal
        elif self.succeeded < len(self.plan.workers):
            # Never reached by a correct run; if it is, say so rather than report success.
            self.reporter.error(
                f"only {self.succeeded} of {len(self.plan.workers)} worker(s) ran to exit 0"
            )
            code = 1
        else:
            code = 0
        failure = self.failure
        if failure is not None and failure.log_path is None:
            failure = failure._replace(output_tail=tuple(self.relay.tail(failure.rank)))
        return Outcome(
            exit_code=code,
            failure=failure,
            fatal_signal=self.fatal_signal,
            leftovers_killed=self.leftovers,
        )


def _pipe_above_stdio() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are not 0-2 (free when the launcher ran with ``2>&-``),
    so a worker's dup2 onto its stdout/stderr can never clobber it."""
    read_fd, write_fd = os.pipe()
    if min(read_fd, write_fd) > 2:
        return read_fd, write_fd
    import fcntl

    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (read_fd, write_fd))
    os.close(read_fd)
    os.close(write_fd)
    return moved[0], moved[1]
