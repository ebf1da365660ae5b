"""The spawner: the only part of hpclaunch with side effects on processes.

:func:`run` takes a :class:`~hpclaunch.spawner.plan.LaunchPlan` and returns an
:class:`~hpclaunch.spawner.report.Outcome`. Everything that can fail because of bad input
(log dir, PID file) is prepared before the first worker starts, so such failures spawn
nothing and surface as :class:`~hpclaunch.errors.SpawnError` (exit 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, FrozenSet, Mapping, NamedTuple, Optional

from hpclaunch.spawner.plan import LaunchPlan

if TYPE_CHECKING:
    from hpclaunch.spawner.report import Outcome


class RunOptions(NamedTuple):
    kill_timeout: float = 15.0
    pid_file: Optional[str] = None
    log: Callable[[str], None] = lambda message: None
    prefix_output: bool = True
    ranks_filter: Optional[FrozenSet[int]] = None
    #: Workers write to the console directly: fastest, but no tail for a failure summary.
    raw_output: bool = False
    #: Logged once everything that could fail on bad input has been prepared.
    banner: str = ""


def run(plan: LaunchPlan, options: RunOptions, base_env: Mapping[str, str]) -> Outcome:
    # Imported here, not at the top: ``--dry-run`` and the elastic path import this package
    # for RunOptions/plan alone and must not pay for ctypes, signal and selectors.
    from hpclaunch.spawner import files
    from hpclaunch.spawner.guard import launch_guard
    from hpclaunch.spawner.supervisor import Supervisor, SupervisorOptions

    logs: Mapping[str, files.LogFile] = {}
    with launch_guard(options.pid_file) as guard:
        try:
            logs = files.open_log_files(s.log_path for s in plan.workers if s.log_path)
            supervisor = Supervisor(
                plan,
                SupervisorOptions(
                    kill_timeout=options.kill_timeout,
                    tree_token=guard.token,
                    log=options.log,
                    prefix_output=options.prefix_output,
                    ranks_filter=options.ranks_filter,
                    raw_output=options.raw_output,
                ),
                base_env,
                logs,
                guard.inbox,
                guard.watchdog,
                guard.helpers,
            )
            if options.banner:
                options.log(options.banner)
            supervisor.handle_signals(guard.inbox.drain())  # a signal before the first spawn
            supervisor.start_all()
            supervisor.loop()
            guard.clean = supervisor.finished()
            return supervisor.outcome()
        finally:
            files.close_all(log.fd for log in logs.values())


__all__ = ["RunOptions", "run", "LaunchPlan"]
