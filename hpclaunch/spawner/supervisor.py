"""The static-mode supervisor: start this node's workers and see them through to an Outcome.

Workers are forked and exec'd directly (no shell, no Python middleman), each in its own
session with ``PR_SET_PDEATHSIG``; fail-fast, forwarding and teardown are the shared event
loop's (:mod:`hpclaunch.spawner.loop`).
"""

from __future__ import annotations

import os
import signal
from typing import Callable, Dict, FrozenSet, Mapping, NamedTuple, Optional

from hpclaunch import reporter
from hpclaunch.spawner import binding, console, tree
from hpclaunch.spawner.inbox import (
    FATAL_SIGNALS,
    SignalInbox,
    fork_with_signals_blocked,
    reset_in_child,
)
from hpclaunch.spawner.loop import TreeSupervisor
from hpclaunch.spawner.plan import LaunchPlan, RankSpec
from hpclaunch.spawner.relay import OutputRelay
from hpclaunch.spawner.report import Outcome, WorkerFailure

#: Upper bound for closing inherited descriptors (``closerange`` uses close_range(2)).
MAX_FD = 1 << 30


class SupervisorOptions(NamedTuple):
    kill_timeout: float = 15.0
    tree_token: str = ""
    log: Callable[[str], None] = lambda message: None
    #: Console output (when not in per-rank logs): prefix each line with ``[rank<R>]: ``.
    prefix_output: bool = True
    #: Only these ranks' console output is shown (None: all).
    ranks_filter: Optional[FrozenSet[int]] = None


def spawn_worker(
    spec: RankSpec,
    env: Mapping[str, str],
    stdout_fd: Optional[int] = None,
    stderr_fd: Optional[int] = None,
) -> tuple[int, str]:
    """fork + exec one worker in its own session, dying with the launcher (pdeathsig).

    Returns the PID and, if exec failed, why (the child then exits 127). Handled signals
    are blocked across the fork so a signal can never run the launcher's handler in the
    child; the child restores default dispositions before unblocking.
    """
    parent = os.getpid()
    err_read, err_write = os.pipe()  # close-on-exec: EOF means exec succeeded
    pid, old_mask = fork_with_signals_blocked((err_read, err_write))
    if pid == 0:
        try:
            os.close(err_read)
            reset_in_child()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.setsid()
            tree.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != parent:  # the launcher died before pdeathsig was armed
                os._exit(1)
            binding.bind_self(spec.cpus, spec.mem_node)
            if stdout_fd is not None:
                os.dup2(stdout_fd, 1)
            if stderr_fd is not None:
                os.dup2(stderr_fd, 2)
            # Only 0-2 go to the worker (as torchrun's close_fds=True): descriptors the
            # launcher inherited, e.g. an MPI process manager's pipes, are not the worker's.
            os.closerange(3, err_write)
            os.closerange(err_write + 1, MAX_FD)
            os.execve(spec.argv[0], list(spec.argv), dict(env))
        except BaseException as exc:  # noqa: B036 - must never return into the launcher
            try:
                os.write(err_write, f"cannot start {spec.argv[0]!r}: {exc}".encode())
            finally:
                os._exit(127)
        os._exit(127)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(err_write)
    chunks = []
    while True:
        chunk = os.read(err_read, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(err_read)
    return pid, b"".join(chunks).decode(errors="replace")


class Supervisor(TreeSupervisor):
    """Runs one plan to an :class:`Outcome`; owns every process it starts."""

    def __init__(
        self,
        plan: LaunchPlan,
        options: SupervisorOptions,
        base_env: Mapping[str, str],
        log_fds: Mapping[str, int],
        inbox: SignalInbox,
        watchdog: tree.Watchdog,
    ) -> None:
        super().__init__(inbox, options.kill_timeout, options.log)
        self.plan = plan
        self.options = options
        self.base_env = base_env
        self.log_fds = log_fds
        self.watchdog = watchdog
        self.live: Dict[int, RankSpec] = {}
        self.exec_errors: Dict[int, str] = {}
        self.failure: Optional[WorkerFailure] = None
        self.console = console.get()
        self.console.attach(self.selector)
        self.relay = OutputRelay(self.selector, self.console)
        self.output = console.OutputOptions(log_fds, options.prefix_output, options.ranks_filter)
        self.layout = console.Layout()

    # ------------------------------------------------------------------ spawning

    def start_all(self) -> None:
        for spec in self.plan.workers:
            if self.phase != self.RUNNING:
                return  # a fatal signal or a failure arrived while starting: start no more
            env = dict(self.base_env)
            env.update(spec.env)
            env[tree.TREE_TOKEN_VAR] = self.options.tree_token
            pid, error = self.spawn_with_output(spec, env)
            self.no_children = False
            self.live[pid] = spec
            self.watchdog.track(pid)
            if error:
                self.exec_errors[pid] = error
            self.handle_signals(self.inbox.drain())

    def spawn_with_output(self, spec: RankSpec, env: Mapping[str, str]) -> tuple[int, str]:
        """Per-rank log file, else a pty or pipe to the relay, else the console as it is."""
        return console.spawn_with_output(
            spawn_worker, spec, env, self.output, self.layout, self.relay
        )

    # ------------------------------------------------------------------ loop hooks

    def forward(self, sig: int) -> None:
        for pid in self.live:
            tree.send(pid, sig)
        self.log(f"forwarded {signal.Signals(sig).name} to {len(self.live)} worker(s)")

    def on_fatal(self, sig: int) -> None:
        if self.failure is None:
            self.fatal_signal = sig
        self.log(f"got {signal.Signals(sig).name}: stopping {len(self.live)} worker(s)")

    def on_child_exit(self, pid: int, status: int) -> None:
        spec = self.live.pop(pid, None)
        if spec is not None:  # else an adopted orphan (we are its subreaper)
            self.on_worker_exit(pid, spec, status)

    def on_worker_exit(self, pid: int, spec: RankSpec, status: int) -> None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        if code == 0:
            if not self.live and self.phase == self.RUNNING and not self.no_children_now():
                self.cleanup_leftovers()
            return
        if self.phase != self.RUNNING or self.failure is not None:
            return  # a consequence of our own teardown, not a cause
        self.failure = WorkerFailure(
            rank=spec.rank,
            local_rank=spec.local_rank,
            host=self.plan.host,
            pid=pid,
            exit_code=code,
            signal=sig,
            log_path=spec.log_path,
            detail=self.exec_errors.get(pid, ""),
        )
        self.log(f"{self.failure.describe()}: stopping the other workers")
        self.begin_terminate()

    def cleanup_leftovers(self) -> None:
        """Every worker succeeded but left descendants (daemons): stop them too."""
        self.leftovers = len(tree.descendants(self.me))
        reporter.get().warning(
            f"all workers exited 0 but {self.leftovers} process(es) they started are still "
            "running: stopping them"
        )
        self.begin_terminate()

    def begin_terminate(self) -> None:
        self.start_clock()
        targets = set(self.live) | set(tree.descendants(self.me))
        for pid in targets:
            tree.send(pid, signal.SIGTERM)

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
        super().close()

    def fatal_signal_arrived(self) -> bool:
        return any(sig in FATAL_SIGNALS for sig in self.inbox.drain())

    def outcome(self) -> Outcome:
        if self.failure is not None:
            code = self.failure.status
        elif self.fatal_signal is not None:
            code = 128 + self.fatal_signal
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
