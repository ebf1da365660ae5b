"""The event loop that owns the workers: spawn, reap, forward, tear down. No polling.

Signal handlers do nothing but let Python write the signal number to a wakeup pipe
(``signal.set_wakeup_fd``); one ``selectors`` loop sleeps on that pipe and wakes for
SIGCHLD, SIGINT/TERM/HUP, SIGUSR1/2. Children are reaped with ``waitpid(-1, WNOHANG)``, so a
failed worker is noticed the moment it dies, not at the next poll, and because the launcher
is a subreaper the same call reaps adopted orphans and, by raising ``ECHILD``, says when the
last descendant is gone.

Teardown is torch elastic's TERM -> bounded wait -> KILL -> bounded wait, applied to whole
process trees (every descendant, however detached) rather than to process groups only.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Set

from hpclaunch.spawner import tree
from hpclaunch.spawner.plan import LaunchPlan, RankSpec
from hpclaunch.spawner.relay import OutputRelay
from hpclaunch.spawner.report import Outcome, WorkerFailure

FATAL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
HANDLED_SIGNALS = FATAL_SIGNALS + FORWARDED_SIGNALS + (signal.SIGCHLD,)
#: Python ignores these at start-up and an ignored disposition survives exec: without a
#: reset a worker (or a shell pipeline inside it) would never die of a broken pipe.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)

#: Upper bound for closing inherited descriptors (``closerange`` uses close_range(2)).
MAX_FD = 1 << 30

#: How long to wait for SIGKILLed processes to be reaped. A process in uninterruptible
#: sleep (D state, e.g. a hung NCCL/GPU call or NFS) cannot be reaped by SIGKILL; waiting
#: forever would hang the job, so we give up and say so.
KILL_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class SupervisorOptions:
    kill_timeout: float = 15.0
    tree_token: str = ""
    log: Callable[[str], None] = lambda message: None
    #: Console output (when not in per-rank logs): prefix each line with ``[rank<R>]: ``.
    prefix_output: bool = True
    #: Only these ranks' console output is shown (None: all).
    ranks_filter: Optional[FrozenSet[int]] = None


def _ignore(signum: int, frame: Optional[FrameType]) -> None:
    """Python-level no-op: the C handler has already written ``signum`` to the wakeup fd."""


class SignalInbox:
    """Signals as bytes on a pipe, read by the event loop."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._previous: Dict[int, object] = {}
        self._previous_fd = -1

    def install(self) -> None:
        self._previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            self._previous[sig] = signal.signal(sig, _ignore)

    def drain(self) -> List[int]:
        received: List[int] = []
        while True:
            try:
                data = os.read(self.read_fd, 512)
            except BlockingIOError:
                return received
            if not data:
                return received
            received.extend(data)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self.read_fd)
        os.close(self.write_fd)


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
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(err_read)
        os.close(err_write)
        raise
    if pid == 0:
        try:
            os.close(err_read)
            signal.set_wakeup_fd(-1)
            for sig in HANDLED_SIGNALS + RESTORED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.setsid()
            tree.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != parent:  # the launcher died before pdeathsig was armed
                os._exit(1)
            if spec.cpus is not None:
                os.sched_setaffinity(0, spec.cpus)
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


class Supervisor:
    """Runs one plan to an :class:`Outcome`; owns every process it starts."""

    RUNNING, TERMINATING, KILLING = "running", "terminating", "killing"

    def __init__(
        self,
        plan: LaunchPlan,
        options: SupervisorOptions,
        base_env: Mapping[str, str],
        log_fds: Mapping[str, int],
        inbox: SignalInbox,
        watchdog: tree.Watchdog,
    ) -> None:
        self.plan = plan
        self.options = options
        self.base_env = base_env
        self.log_fds = log_fds
        self.inbox = inbox
        self.watchdog = watchdog
        self.me = os.getpid()
        self.live: Dict[int, RankSpec] = {}
        self.exec_errors: Dict[int, str] = {}
        self.no_children = False
        self.phase = self.RUNNING
        self.deadline = 0.0
        self.failure: Optional[WorkerFailure] = None
        self.fatal_signal: Optional[int] = None
        self.killed: Set[int] = set()
        self.leftovers = 0
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.inbox.read_fd, selectors.EVENT_READ, None)
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

    # ------------------------------------------------------------------ events

    def handle_signals(self, received: List[int]) -> None:
        for sig in received:
            if sig == signal.SIGCHLD:
                continue  # reaped below, once for any number of SIGCHLDs
            if sig in FORWARDED_SIGNALS:
                if self.phase == self.RUNNING:
                    for pid in self.live:
                        tree.send(pid, sig)
                    self.options.log(
                        f"forwarded {signal.Signals(sig).name} to {len(self.live)} worker(s)"
                    )
            elif sig in FATAL_SIGNALS:
                self.on_fatal_signal(sig)
        self.reap()

    def on_fatal_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.phase == self.RUNNING:
            if self.failure is None:
                self.fatal_signal = sig
            self.options.log(f"got {name}: stopping {len(self.live)} worker(s)")
            self.begin_terminate()
        elif self.phase == self.TERMINATING:
            self.options.log(f"got {name} again: killing now")
            self.begin_kill()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.no_children = True
                return
            if pid == 0:
                self.no_children = False
                return
            spec = self.live.pop(pid, None)
            if spec is None:
                continue  # an adopted orphan (we are its subreaper)
            self.on_worker_exit(pid, spec, status)
        # not reached

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
        self.options.log(f"{self.failure.describe()}: stopping the other workers")
        self.begin_terminate()

    def no_children_now(self) -> bool:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            self.no_children = True
            return True
        if pid != 0:  # reaped an orphan that happened to exit just now
            return self.no_children_now()
        self.no_children = False
        return False

    def cleanup_leftovers(self) -> None:
        """Every worker succeeded but left descendants (daemons): stop them too."""
        self.leftovers = len(tree.descendants(self.me))
        self.options.log(
            f"all workers exited 0 but {self.leftovers} process(es) they started are still "
            "running: stopping them"
        )
        self.begin_terminate()

    # ------------------------------------------------------------------ teardown

    def begin_terminate(self) -> None:
        self.phase = self.TERMINATING
        self.deadline = time.monotonic() + self.options.kill_timeout
        targets = set(self.live) | set(tree.descendants(self.me))
        for pid in targets:
            tree.send(pid, signal.SIGTERM)

    def begin_kill(self) -> None:
        self.phase = self.KILLING
        self.deadline = time.monotonic() + KILL_WAIT_SECONDS
        for _ in range(10):
            fresh = [p for p in tree.descendants(self.me) if p not in self.killed]
            if not fresh:
                break
            tree.freeze_and_kill(fresh)
            self.killed.update(fresh)
        if self.killed:
            self.options.log(f"killed {len(self.killed)} process(es) that outlived SIGTERM")

    def finished(self) -> bool:
        return not self.live and self.no_children

    def loop(self) -> None:
        try:
            self.reap()
            while not self.finished():
                timeout = None
                if self.phase != self.RUNNING:
                    timeout = max(0.0, self.deadline - time.monotonic())
                for key, _ in self.selector.select(timeout):
                    if key.data is self.relay:
                        self.relay.on_readable(key.fd)
                self.handle_signals(self.inbox.drain())
                if self.finished():
                    break
                if self.phase != self.RUNNING and time.monotonic() >= self.deadline:
                    if self.phase == self.TERMINATING:
                        self.begin_kill()
                    else:
                        self.options.log(
                            "some processes did not die after SIGKILL (uninterruptible "
                            "sleep?); giving up on them"
                        )
                        return
        finally:
            self.relay.drain_all()
            self.selector.close()

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


def stderr_log(message: str) -> None:
    sys.stderr.write(f"hpclaunch: {message}\n")
    sys.stderr.flush()
