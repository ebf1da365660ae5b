"""The static-mode supervisor: start this node's workers and see them through to an Outcome.

Workers are forked and exec'd directly (no shell, no Python middleman), each in its own
session with ``PR_SET_PDEATHSIG``; fail-fast, forwarding and teardown are the shared event
loop's (:mod:`hpclaunch.spawner.loop`).
"""

from __future__ import annotations

import os
import selectors
import signal
from typing import TYPE_CHECKING, AbstractSet, Dict, List, Mapping, NoReturn, Optional

from hpclaunch.model.plan import LaunchPlan, RankSpec
from hpclaunch.reporter import Reporter
from hpclaunch.spawner import tree
from hpclaunch.spawner.child import become_worker, exec_failure
from hpclaunch.spawner.events import Events
from hpclaunch.spawner.guard import LaunchGuard
from hpclaunch.spawner.hang import STALL_EXIT_STATUS, HangWatch, WatchFiles
from hpclaunch.spawner.inbox import (
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
from hpclaunch.spawner.usage import NodeUsage, cpu_and_peak

if TYPE_CHECKING:
    from resource import struct_rusage

    from hpclaunch.spawner.events import Progress
    from hpclaunch.spawner.output.ranklog import RankLog
    from hpclaunch.spawner.stacks import DumpTarget


def spawn_worker(
    spec: RankSpec,
    env: Mapping[str, str],
    stdout_fd: Optional[int],
    stderr_fd: Optional[int],
    status_fd: int,
    mask: Optional[AbstractSet[int]] = None,
    tracer: Optional[int] = None,
) -> tuple[int, str]:
    """fork + exec one worker in its own session, dying with the launcher (pdeathsig).

    Returns at once with ``(pid, "")``: a child that cannot exec writes ``"<pid> <why>"`` to
    ``status_fd`` (the write end of the supervisor's exec-status pipe) and exits 127, and
    the event loop collects it, so all workers are forked before any exec status is waited
    for. Handled signals are blocked across the fork so a signal can never run the
    launcher's handler in the child; the child restores default dispositions, then the
    signal mask ``mask`` (the one the launcher was started with; default: the launcher's).
    """
    parent = os.getpid()
    pid, old_mask = fork_with_signals_blocked(())
    if pid == 0:
        _child(spec, env, parent, old_mask if mask is None else mask, stdout_fd, stderr_fd,
               status_fd, tracer)
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
    tracer: Optional[int],
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
            tracer=tracer,
        )
    except BaseException as exc:  # noqa: B036 - must never return into the launcher
        try:
            why = " ".join(exec_failure(spec.argv[0], exc).split())[:3000]
            os.write(status_fd, f"{os.getpid()} {why}\n".encode(errors="replace"))
        finally:
            os._exit(127)
    os._exit(127)


#: Workers reported to the watchdog per write while starting (one write wakes it once).
TRACK_BATCH = 64
#: Exit status when a worker could not be started (fork failed: a process limit) and the
#: ones started were stopped: sysexits' EX_OSERR, "cannot fork" (docs/cli.md).
CANNOT_START = 71


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
        #: Why a worker could not be started (fork failed), if that ended the launch.
        self.start_failure = ""
        #: SIGUSR1/2 that arrived before every worker was running: sent once all are.
        self.deferred: List[int] = []
        self.failure: Optional[WorkerFailure] = None
        if plan.world.source == "slurm":  # the only scheduler that can end the job here
            from hpclaunch.spawner.scheduler import step_end_for

            self.step_end = step_end_for(plan.world, plan.launch, reporter, events)
        self.console = console
        self.console.attach(self.selector)
        self.relay = OutputRelay(self.selector, self.console)
        self.relay.on_log_stopped = self.log_stopped
        #: SIGQUIT's dumps and --stall_timeout (hpclaunch.spawner.hang)
        self.watch_files = WatchFiles(plan, base_env)
        self.hang = HangWatch(plan, self.watch_files, self.selector, reporter, events,
                              self.dump_targets, self.relay.progress, self.adopt_helper)
        self.layout = wiring.Layout()
        # One pipe for every child's exec status, read by the loop: a child that cannot exec
        # writes one "<pid> <why>" line (atomic: shorter than PIPE_BUF) and exits 127.
        self.status_read, self.status_write = _pipe_above_stdio()
        os.set_blocking(self.status_read, False)
        self.selector.register(self.status_read, selectors.EVENT_READ, self.read_exec_status)
        self.usage = NodeUsage([spec.rank for spec in plan.workers])
        self.node = (plan.world.node_rank, plan.host)

    # ------------------------------------------------------------------ spawning

    def start_all(self) -> None:
        """Fork every worker first; exec statuses and exits arrive in the event loop."""
        try:
            for spec in self.plan.workers:
                if self.phase != self.RUNNING:
                    return  # a fatal signal or a failure arrived while starting: no more
                try:
                    self.start_one(spec)
                except OSError as exc:  # fork: a process limit; a pipe or pty: out of them
                    self.cannot_start(spec, exc)
                    return
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
        env.update(self.watch_files.worker_env(spec.local_rank, env))
        env[tree.TREE_TOKEN_VAR] = self.tree_token
        pid, error = self.spawn_with_output(spec, env)
        self.no_children = False
        self.live[pid] = spec
        self.started += 1
        self.untracked.append(pid)
        if error:
            self.exec_errors[pid] = error
        self.usage.start(spec.rank)
        self.events.emit("worker_spawned", rank=spec.rank, local_rank=spec.local_rank, pid=pid)

    def cannot_start(self, spec: RankSpec, exc: OSError) -> None:
        """A worker could not be started: say why (which limit), stop those that were."""
        from hpclaunch.spawner.limits import fork_failure

        self.start_failure = (
            f"cannot start rank {spec.rank}: {fork_failure(exc)}; {self.started} of "
            f"{len(self.plan.workers)} worker(s) started"
        )
        self.reporter.info(f"rank {spec.rank} cannot be started: stopping the {self.started} "
                           "worker(s) started")
        self.begin_terminate()

    def track_started(self) -> None:
        """Tell the watchdog the new workers' process groups, in one write."""
        self.watchdog.track_many(self.untracked)
        self.untracked = []

    def spawn_with_output(self, spec: RankSpec, env: Mapping[str, str]) -> tuple[int, str]:
        """Per-rank log file, else a pty or pipe to the relay, else the console as it is."""
        status, mask = self.status_write, self.inbox.worker_mask
        tracer = self.me if self.plan.launch.stack_dumps else None

        def spawn(
            spec: RankSpec, env: Mapping[str, str], out: Optional[int], err: Optional[int]
        ) -> tuple[int, str]:
            return spawn_worker(spec, env, out, err, status, mask, tracer)

        return wiring.spawn_with_output(
            spawn, spec, env, self.plan.output, self.plan.prefix_output, self.log_files,
            self.layout, self.relay,
        )

    def log_stopped(self, rank: int, log: RankLog) -> None:
        """Once per rank whose log the file system refused: which, after what, and why."""
        self.reporter.warning(
            f"rank {rank}'s log {log.path} stopped after {log.written} bytes: {log.why()}; "
            "the rest of its output goes to this console"
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
                    self.all_running()
                break
            data += chunk
        for line in data.decode(errors="replace").splitlines():
            pid, _, why = line.partition(" ")
            if pid.isdigit():
                self.exec_errors[int(pid)] = why

    # ------------------------------------------------------------------ loop hooks

    def forward(self, sig: int) -> Optional[int]:
        """To every worker, also those not yet started when the signal arrived: until each
        runs its program (the exec-status pipe's EOF) the signal waits (None), then goes to
        all."""
        if self.status_read >= 0:
            if sig not in self.deferred:
                self.deferred.append(sig)
                self.reporter.debug(f"{signal.Signals(sig).name} arrived while workers start: "
                                    "forwarding it once all of them run")
            return None
        for pid in self.live:
            tree.send(pid, sig)
        self.note_sent(sig, "worker(s)", list(self.live))
        self.reporter.info(f"forwarded {signal.Signals(sig).name} to {len(self.live)} worker(s)")
        return len(self.live)

    def worker_count(self) -> int:
        return len(self.live)

    def progress(self) -> Progress:
        return self.hang.progress(self.relay.progress)

    def all_running(self) -> None:
        """Every worker was forked and has exec'd (or failed to): send what waited for it."""
        deferred, self.deferred = self.deferred, []
        if self.phase == self.RUNNING:
            for sig in deferred:
                count = self.forward(sig)
                self.events.emit("signal", signal=signal.Signals(sig).name,
                                 action="forwarded", workers=count)

    def on_fatal(self, sig: int) -> None:
        if self.failure is None:
            self.fatal_signal = sig
        self.reporter.info(
            f"got {signal.Signals(sig).name}{self.ended_by(sig)}: stopping {len(self.live)} "
            "worker(s)"
        )

    def on_dump_request(self) -> None:
        self.hang.on_sigquit()

    def dump_targets(self) -> List[DumpTarget]:
        """The live workers, for their stacks."""
        from hpclaunch.spawner.stacks import DumpTarget

        return [
            DumpTarget(spec.local_rank, spec.rank, pid, self.log_fds.get(spec.log_path or ""))
            for pid, spec in self.live.items()
        ]

    def on_child_exit(
        self, pid: int, status: int, usage: Optional[struct_rusage] = None
    ) -> None:
        spec = self.live.pop(pid, None)
        if spec is not None:  # else an adopted orphan (we are its subreaper)
            self.on_worker_exit(pid, spec, status, usage)

    def on_worker_exit(
        self, pid: int, spec: RankSpec, status: int, usage: Optional[struct_rusage] = None
    ) -> None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        cpu, peak = cpu_and_peak(usage)
        end = self.record_exit(pid, spec.rank, spec.local_rank, code, sig, cpu, peak)
        if code == 0:
            self.succeeded += 1
            self.check_all_done()
            return
        if self.phase != self.RUNNING or self.failure is not None or self.hang.stalled is not None:
            return  # a consequence of our own teardown (or of the stall), not a cause
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
            cpu_seconds=cpu,
            peak_rss=peak,
            oom_killed=end.oom_killed,
        )
        self.reporter.info(f"{self.failure.describe()}: stopping the other workers")
        self.note_teardown("worker_failed", rank=spec.rank, status=end.status)
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
        self.note_teardown("leftovers")
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
        due = [self.relay.next_timeout(), self.hang.wake_timeout(self.phase == self.RUNNING)]
        return min((d for d in due if d is not None), default=None)

    def on_wake(self) -> None:
        self.relay.show_idle()
        running = self.phase == self.RUNNING
        if self.hang.on_wake(running, self.relay.paused) and running:
            self.note_teardown("stall")
            self.begin_terminate()  # the stall is reported and its stacks are out

    def close(self) -> None:
        self.hang.close()
        self.relay.drain_all()
        self.wrap_up()  # the usage line after the workers' last output
        self.console.detach()
        # Everything the workers wrote reaches the console while its reader lives, however
        # slow; only a SIGINT/TERM/HUP from outside (now, or the one that ended the run)
        # lets the launcher go with output undelivered, and then it says how much.
        stop = self.fatal_signal
        if stop is None:
            stop = self.console.flush(self.inbox.read_fd, self.inbox.fatal)
        if stop is not None and self.console.abandoned is None:
            self.console.abandon(f"stopped by {signal.Signals(stop).name}")
        for why, count in self.console.take_drops().items():
            self.events.emit("output_dropped", bytes=count, reason=why)
        for fd in (self.status_read, self.status_write):
            if fd >= 0:
                os.close(fd)
        self.status_read = self.status_write = -1
        super().close()

    def outcome(self) -> Outcome:
        if self.failure is not None:
            code = self.failure.status
        elif self.start_failure:
            code = CANNOT_START
        elif self.hang.stalled is not None:
            code = STALL_EXIT_STATUS
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
        stopped = self.relay.stopped_logs.get(failure.rank) if failure is not None else None
        if failure is not None and stopped is not None:
            failure = failure._replace(log_incomplete=f"stopped after {stopped.written} bytes: "
                                       f"{stopped.why()}")
        if failure is not None and (failure.log_path is None or stopped is not None):
            failure = failure._replace(output_tail=tuple(self.relay.tail(failure.rank)))
        return Outcome(
            exit_code=code,
            failure=failure,
            fatal_signal=self.fatal_signal,
            leftovers_killed=self.leftovers,
            error=("" if failure is not None else
                   self.start_failure if code == CANNOT_START else self.hang.outcome_error()),
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
