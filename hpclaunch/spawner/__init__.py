"""The spawner: the only part of hpclaunch with side effects on processes.

:func:`run` takes a :class:`~hpclaunch.spawner.plan.LaunchPlan` and returns an
:class:`~hpclaunch.spawner.report.Outcome`. Everything that can fail because of bad input
(log dir, PID file) is prepared before the first worker starts, so such failures spawn
nothing and surface as :class:`~hpclaunch.errors.SpawnError` (exit 2).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Callable, FrozenSet, Mapping, Optional

from hpclaunch.spawner import files, tree
from hpclaunch.spawner.inbox import SignalInbox
from hpclaunch.spawner.plan import LaunchPlan
from hpclaunch.spawner.report import Outcome
from hpclaunch.spawner.supervisor import Supervisor, SupervisorOptions


@dataclass(frozen=True)
class RunOptions:
    kill_timeout: float = 15.0
    pid_file: Optional[str] = None
    log: Callable[[str], None] = lambda message: None
    prefix_output: bool = True
    ranks_filter: Optional[FrozenSet[int]] = None
    #: Logged once everything that could fail on bad input has been prepared.
    banner: str = ""


def run(plan: LaunchPlan, options: RunOptions, base_env: Mapping[str, str]) -> Outcome:
    inbox = SignalInbox()
    inbox.install()  # before anything is created or spawned: no window for a lost signal
    log_fds: Mapping[str, int] = {}
    pid_written = False
    watchdog: Optional[tree.Watchdog] = None
    clean = False
    try:
        log_fds = files.open_log_files(s.log_path for s in plan.workers if s.log_path)
        if options.pid_file is not None:
            files.write_pid_file(options.pid_file, os.getpid())
            pid_written = True
        token = secrets.token_hex(16)
        watchdog = tree.start_watchdog(token, options.pid_file)
        tree.become_subreaper()
        tree.load_libc()
        supervisor = Supervisor(
            plan,
            SupervisorOptions(
                kill_timeout=options.kill_timeout,
                tree_token=token,
                log=options.log,
                prefix_output=options.prefix_output,
                ranks_filter=options.ranks_filter,
            ),
            base_env,
            log_fds,
            inbox,
            watchdog,
        )
        if options.banner:
            options.log(options.banner)
        supervisor.handle_signals(inbox.drain())  # a signal that came before the first spawn
        supervisor.start_all()
        supervisor.loop()
        clean = supervisor.finished()
        return supervisor.outcome()
    finally:
        files.close_all(log_fds.values())
        if watchdog is not None:
            if clean:
                watchdog.done()
            else:
                watchdog.close()  # EOF without "done": the watchdog kills what is left
        if pid_written and options.pid_file is not None:
            tree.remove_pid_file(options.pid_file, os.getpid())
        inbox.uninstall()


__all__ = ["RunOptions", "run", "LaunchPlan", "Outcome"]
