"""``hpclaunch-torchrun`` (also ``python -m hpclaunch.torchrun``): torchrun's command line,
run by hpclaunch.

Parsing (:mod:`hpclaunch.torchrun.parser`, torchrun 2.13's flags and ``PET_*``), then the
launch it means (:mod:`hpclaunch.torchrun.form`), then the public API's calls, as the
``hpclaunch`` command does: a dry run, or the launch and its exit status. Workers see what
torchrun's see (its variables, no ``--local-rank`` argument); where hpclaunch differs on
purpose (the failing worker's exit status instead of 1; teardown as soon as a worker fails)
docs/cli.md says so, flag by flag.
"""

from __future__ import annotations

import os
import sys

#: typing.TYPE_CHECKING without importing typing (or anything of hpclaunch's but
#: hpclaunch.hold) before :func:`main`'s first line holds the signals, as ``hpclaunch`` does.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Sequence

    from hpclaunch.model.world import World
    from hpclaunch.reporter import Reporter
    from hpclaunch.spawner.process import LauncherProcess


def _run(argv: Sequence[str], reporter: Reporter, worlds: List[World],
         process: LauncherProcess, stdout_closed: bool) -> int:
    from hpclaunch import api
    from hpclaunch.torchrun.form import plan_launch
    from hpclaunch.torchrun.parser import parse

    env = dict(os.environ)
    args = parse(argv, env)
    launch = plan_launch(args, env, reporter)
    worlds.append(launch.plan.world)  # for finish(), whatever happens next
    for note in launch.notes:
        reporter.info(note)
    stop = process.stop_signal()
    if stop is not None:  # a SIGINT/TERM/HUP while parsing or reading the world
        import signal

        reporter.info(f"got {signal.Signals(stop).name} before any worker started: stopping")
        return 128 + stop
    if args.dry_run:
        from hpclaunch.model.plan import write_plan
        from hpclaunch.stdout import Stdout

        write_plan(launch.plan.to_json(), Stdout("the plan", stdout_closed))
        return 0
    outcome = api.launch(launch.plan, env=env, reporter=reporter, process=process)
    voice = reporter.through(process.console().message)  # after the workers' output
    from hpclaunch.reporter import ERROR

    if outcome.failure is not None:
        from hpclaunch.spawner.report import failure_summary

        voice.emit(ERROR, failure_summary(outcome.failure), highlight=True)
    elif outcome.error:
        voice.emit(ERROR, [outcome.error], highlight=True)
    return outcome.exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command's whole life; returns the exit status (see docs/cli.md). Its first line
    holds the launcher's signals, as ``hpclaunch``'s does (docs/cli.md, Signals)."""
    from hpclaunch.hold import hold

    held = hold()
    from hpclaunch import api
    from hpclaunch.errors import OutputError, UsageError
    from hpclaunch.reporter import CRITICAL, INFO, LEVELS, Reporter, reopen_closed_standard_fds
    from hpclaunch.spawner.inbox import SignalInbox
    from hpclaunch.spawner.process import LauncherProcess

    process = LauncherProcess(SignalInbox(held))
    closed = reopen_closed_standard_fds()
    color = os.isatty(2) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    # torchrun's LOGLEVEL (its logger's level) sets the launcher's: WARNING hides the
    # banner and the notes, as torchrun's own info lines are hidden.
    level = LEVELS.get(os.environ.get("LOGLEVEL", "info").lower(), INFO)
    reporter = Reporter(level, color=color)
    worlds: List[World] = []
    try:
        status = _run(sys.argv[1:] if argv is None else list(argv), reporter, worlds,
                      process, 1 in closed)
    except UsageError as exc:
        reporter.emit(CRITICAL, [f"error: {' '.join(str(exc).split())}"])
        status = 2
    except OutputError as exc:
        reporter.emit(CRITICAL, [f"error: {exc}"])
        status = 1
    finally:
        process.close_console()  # everything delivered (or a signal said stop) before exit
    try:
        api.finish(status, worlds[0] if worlds else None)
    except UsageError as exc:
        reporter.error(" ".join(str(exc).split()))
        status = status or 2
    return status


__all__ = ["main"]
