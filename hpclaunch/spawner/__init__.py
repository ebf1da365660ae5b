"""The spawner: the part of hpclaunch that starts, watches and stops processes.

:func:`run` takes a :class:`~hpclaunch.model.plan.LaunchPlan` (with the output and launch
options it was planned with) and returns an :class:`~hpclaunch.spawner.report.Outcome`.
Everything that can fail because of bad input (a port in use, the descriptor limit, the
log dir, the PID file) is checked or prepared before the first worker starts, so such
failures spawn nothing and surface as :class:`~hpclaunch.errors.SpawnError` (exit 2).

Importing this package imports nothing: ``--dry-run`` and a world's detection never pay for
the spawner's modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional

if TYPE_CHECKING:
    from hpclaunch.model.plan import LaunchPlan
    from hpclaunch.reporter import Reporter
    from hpclaunch.spawner.events import Events
    from hpclaunch.spawner.inbox import SignalInbox
    from hpclaunch.spawner.output.console import Console
    from hpclaunch.spawner.report import Outcome


def run(
    plan: LaunchPlan,
    base_env: Mapping[str, str],
    reporter: Reporter,
    console: Console,
    events: Optional[Events] = None,
    inbox: Optional[SignalInbox] = None,
) -> Outcome:
    """Run the plan's workers to the end: static mode here, elastic mode under torch's agent.

    ``base_env`` is what workers inherit before the plan's own variables; ``reporter``
    speaks for the launcher (through ``console`` while workers run, so its lines stay in
    order with theirs); ``events`` records what happens (default: nothing is kept);
    ``inbox``: the signals the caller holds since its first line (default: held here, for
    the launch only).
    """
    from hpclaunch.spawner import preflight
    from hpclaunch.spawner.events import NoEvents

    preflight.check(plan)
    record = events if events is not None else NoEvents()
    if plan.elastic is not None:
        from hpclaunch.spawner.elastic.launcher import run_elastic

        return run_elastic(plan, base_env, reporter, record, inbox)
    return _run_static(plan, base_env, reporter, console, record, inbox)


def _run_static(
    plan: LaunchPlan,
    base_env: Mapping[str, str],
    reporter: Reporter,
    console: Console,
    events: Events,
    inbox: Optional[SignalInbox],
) -> Outcome:
    from hpclaunch.spawner import logs
    from hpclaunch.spawner.guard import launch_guard
    from hpclaunch.spawner.supervisor import Supervisor

    log_files: Mapping[str, logs.LogFile] = {}
    with launch_guard(plan.launch.pid_file, inbox) as guard:
        try:
            log_files = logs.open_log_files(s.log_path for s in plan.workers if s.log_path)
            supervisor = Supervisor(plan, base_env, log_files, guard, reporter, console, events)
            reporter.info(plan.banner())
            supervisor.handle_signals(guard.inbox.drain())  # a signal before the first spawn
            supervisor.start_all()
            supervisor.loop()
            guard.clean = supervisor.finished()
            return supervisor.outcome()
        finally:
            logs.close_all(log.fd for log in log_files.values())


__all__ = ["run"]
