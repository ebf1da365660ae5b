"""The static-mode supervisor: start this node's workers and see them through to an Outcome.

Workers are forked and exec'd directly (no shell, no Python middleman), each in its own
session with ``PR_SET_PDEATHSIG``; fail-fast, forwarding and teardown are the shared event
loop's (:mod:`hpclaunch.spawner.loop`).
"""

from __future__ import annotations

import os
import signal
from typing import Callable, Dict, FrozenSet, Mapping, NamedTuple, Optional

from hpclaunch.spawner import binding, tree
from hpclaunch.spawner.inbox import SignalInbox, fork_with_signals_blocked, reset_in_child
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
        self.relay = OutputRelay(self.selector)

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
        """Per-rank log file, else a pipe to the relay, else the console as it is."""
        if spec.log_path:
            log_fd = self.log_fds[spec.log_path]
            return spawn_worker(spec, env, log_fd, log_fd)
        wanted = self.options.ranks_filter
        if wanted is not None and spec.rank not in wanted:
            devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            try:
                return spawn_worker(spec, env, devnull, devnull)
            finally:
                os.close(devnull)
        if not self.options.prefix_output:
            return spawn_worker(spec, env)
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            pid, error = spawn_worker(spec, env, out_write, err_write)
        except BaseException:
            for fd in (out_read, err_read):
                os.close(fd)
            raise
        finally:
            os.close(out_write)
            os.close(err_write)
        prefix = f"[rank{spec.rank}]: ".encode()
        self.relay.add(out_read, prefix, 1)
        self.relay.add(err_read, prefix, 2)
        return pid, error

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
        self.log(
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

    def close(self) -> None:
        self.relay.drain_all()
        super().close()

    def outcome(self) -> Outcome:
        if self.failure is not None:
            code = self.failure.status
        elif self.fatal_signal is not None:
            code = 128 + self.fatal_signal
        else:
            code = 0
        return Outcome(
            exit_code=code,
            failure=self.failure,
            fatal_signal=self.fatal_signal,
            leftovers_killed=self.leftovers,
        )
