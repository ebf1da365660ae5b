"""hpclaunch's public Python API: the command line's pipeline, one call per step.

    world = hpclaunch.detect_world()                  # which world, from which scheduler
    plan = hpclaunch.plan(world, ["train.py", "--epochs", "3"])
    print(plan.to_json_text())                        # exactly what --dry-run prints
    outcome = hpclaunch.launch(plan)                  # run this node's workers
    hpclaunch.finish(outcome.exit_code, world)        # last: MPI ends its job by the status

``hpclaunch.cli`` is parsing plus these calls, so a program gets the same choices, checks,
worlds, plans and exit statuses as the command line. Each call takes its settings as one
options object from :mod:`hpclaunch.options` or as keywords named like that object's fields
(the CLI's flags), and every refusal is made here, not in the CLI: bad input raises
:class:`~hpclaunch.errors.UsageError` (one line: what is wrong, how to fix it) before
anything is spawned. Launcher messages go to the ``reporter`` given (default: info level
to stderr).

Detecting a world on a Slurm or explicit environment imports no torch, mpi4py, ctypes or
spawner module (a test holds it); planning and launching import what they use.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

from hpclaunch import adapters
from hpclaunch.errors import UsageError
from hpclaunch.fast import which
from hpclaunch.model.world import World
from hpclaunch.options import (
    ElasticOptions,
    LaunchOptions,
    OutputOptions,
    WorldOptions,
    check_local_workers,
)
from hpclaunch.reporter import DEBUG, Reporter

if TYPE_CHECKING:
    from hpclaunch.model.plan import Command, LaunchPlan
    from hpclaunch.spawner.process import LauncherProcess
    from hpclaunch.spawner.report import Outcome


def detect_world(
    env: Optional[Mapping[str, str]] = None,
    options: Optional[WorldOptions] = None,
    *,
    reporter: Optional[Reporter] = None,
    **fields: Any,
) -> World:
    """The World the command line would launch into, from ``env`` (default ``os.environ``).

    ``options`` (or keywords named like its fields: ``adapter``, ``nproc_per_node``,
    ``node_rank``, ``master_addr``, ``master_port``, ``world_info``) are the CLI's flags of
    the same names; ``None`` lets the adapter decide. ``adapter`` is ``"auto"`` (explicit if
    ``world_info`` is given, else Slurm, MPI, an installed plug-in, local -- see
    :mod:`hpclaunch.adapters`) or a name from :func:`hpclaunch.adapters.adapter_names`. The
    World names its adapter (``world.source``). Under MPI this is a collective call: every
    launcher of the job must make it (one ``allgather``).
    """
    options = _with_fields(options or WorldOptions(), fields)
    options.check()
    source = os.environ if env is None else env
    chosen = adapters.select(source, options)
    world = chosen.world(source, options)
    voice = reporter or Reporter()
    for note in chosen.notes():
        voice.info(note)
    return world.from_source(chosen.name)


def resolve_command(
    script: str,
    args: Sequence[str] = (),
    *,
    module: bool = False,
    no_python: bool = False,
    local_rank: bool = True,
) -> Command:
    """The workers' command, checked: a Python script (default), a module, or an executable.

    ``local_rank=False`` is ``--no_local_rank``. The current interpreter runs Python workers.
    """
    from hpclaunch.model.plan import Command

    if module and no_python:
        raise UsageError("--module and --no_python exclude each other: pick one")
    if no_python:
        path = script if os.sep in script else which(script)
        if path is None and os.path.isfile(script):
            raise UsageError(
                f"--no_python target {script!r} is not on PATH: name the file as ./{script}"
            )
        if path is None or not os.path.isfile(path):
            raise UsageError(
                f"--no_python target {script!r} not found: give a path or a command on PATH"
            )
        if not os.access(path, os.X_OK):
            raise UsageError(f"--no_python target {path!r} is not executable: chmod +x it")
        from hpclaunch.spawner.child import missing_interpreter

        interpreter = missing_interpreter(path)
        if interpreter is not None:
            raise UsageError(
                f"--no_python target {path!r} names the interpreter {interpreter!r} on its #! "
                "line, which does not exist here: install it or fix the script's first line"
            )
        return Command(script=os.path.abspath(path), args=tuple(args), mode="exec",
                       pass_local_rank=local_rank)
    if module:
        if not all(part.isidentifier() for part in script.split(".")):
            raise UsageError(f"--module needs a dotted module name, got {script!r}")
        return Command(script=script, args=tuple(args), mode="module",
                       python=sys.executable, pass_local_rank=local_rank)
    if not os.path.isfile(script):
        raise UsageError(
            f"training script {script!r} not found: give the path of a Python script "
            "(or --module for a module, --no_python for an executable)"
        )
    return Command(script=script, args=tuple(args), mode="python",
                   python=sys.executable, pass_local_rank=local_rank)


def plan(
    world: World,
    command: Union[Command, Sequence[str]],
    *,
    output: Optional[OutputOptions] = None,
    launch: Optional[LaunchOptions] = None,
    elastic: Optional[ElasticOptions] = None,
    adapter: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    reporter: Optional[Reporter] = None,
    **fields: Any,
) -> LaunchPlan:
    """This node's workers: each one's argv, environment, log file and cores. Spawns nothing.

    ``command`` is a :func:`resolve_command` or ``[script, *args]`` (a Python script). The
    options (or keywords named like their fields) are checked here: ``output``
    (``log_dir`` turns on per-rank logs, named with ``log_timestamp``, default now;
    ``prefix_output``, ``raw_output``, ``ranks_filter``), ``launch`` (``kill_timeout``,
    ``pid_file``, ``bind_cores`` shared out among the workers, ``numa_binding`` read from
    this machine's topology, with ``env`` as the workers' environment), ``elastic`` (run
    the workers under torch's elastic agent). ``adapter`` names the world's source in the
    plan (default ``world.source``). ``plan(...).to_json_text()`` is what ``--dry-run``
    prints.
    """
    from hpclaunch.model.plan import Command, build_plan

    output, launch = _split_fields(output or OutputOptions(), launch or LaunchOptions(), fields)
    if not isinstance(command, Command):
        argv = [command] if isinstance(command, str) else list(command)
        if not argv:
            raise UsageError("the command is empty: give at least the training script")
        command = resolve_command(argv[0], argv[1:])
    output = output._replace(
        log_dir=os.path.abspath(output.log_dir) if output.log_dir else None,
        log_timestamp=output.log_timestamp or time.strftime("%Y%m%d%H%M%S"),
    )
    check_local_workers(world.local_world_size, f"the {world.source} world")
    _check_plan_options(world, output, launch)
    the_plan = build_plan(adapter or world.source, world, command, output, launch)
    if launch.numa_binding != "none":
        source = os.environ if env is None else env
        the_plan = _bind_numa(the_plan, source, reporter or Reporter())
    if elastic is None:
        return the_plan
    from hpclaunch.model.elastic import elastic_setup

    return the_plan._replace(elastic=elastic_setup(the_plan, elastic))


def launch(
    plan: LaunchPlan,
    *,
    env: Optional[Mapping[str, str]] = None,
    reporter: Optional[Reporter] = None,
    process: Optional[LauncherProcess] = None,
    **fields: Any,
) -> Outcome:
    """Run the plan's workers to the end and return the :class:`Outcome` (never raises for a
    worker's failure: ``outcome.exit_code`` is the contract's exit status).

    Workers inherit ``env`` (default ``os.environ``) as the world's adapter filters it, plus
    the plan's variables. Keywords change the plan's output and launch options for this
    launch (``kill_timeout``, ``pid_file``, ``stall_timeout``, ``stack_dumps``,
    ``prefix_output``, ``ranks_filter``, ``raw_output``), checked as :func:`plan` checks
    them. Signals to this process (SIGINT, SIGTERM, SIGHUP; SIGUSR1/2 forwarded; SIGQUIT
    dumps every rank's stack) are handled from this call's first line to its return, as in
    the CLI. Raises :class:`~hpclaunch.errors.UsageError` (nothing spawned) for a bad
    option, log directory or PID file, a master port in use, too low a file-descriptor
    limit, or elastic mode without torch. ``event_log``/``metrics_file`` (the plan's output
    options, or keywords here) keep the launch's record: see docs/events.md. ``process`` is
    the CLI's (its signals, held since its first line, and its console, left open for the
    failure summary); a program leaves it out.
    """
    from hpclaunch.spawner.inbox import hold_signals

    own = process is None
    if process is None:
        from hpclaunch.spawner.process import LauncherProcess

        process = LauncherProcess(hold_signals())
    try:
        return _launch(plan, env, reporter, process, fields)
    finally:
        if own:
            process.close_console()
            process.inbox.uninstall()


def _launch(
    plan: LaunchPlan,
    env: Optional[Mapping[str, str]],
    reporter: Optional[Reporter],
    process: LauncherProcess,
    fields: Mapping[str, Any],
) -> Outcome:
    from hpclaunch.spawner import run

    if fields:
        output, options = _split_fields(plan.output, plan.launch, fields)
        _check_plan_options(plan.world, output, options)
        plan = plan._replace(output=output, launch=options)
    source = os.environ if env is None else env
    base_env = adapters.worker_environment(plan.adapter, source)
    voice = reporter or Reporter()
    if voice.enabled(DEBUG):
        voice.debug(f"plan: {plan.to_json_text()}")
    console = process.console()
    speaker = voice.through(console.message)
    if plan.output.event_log is None and plan.output.metrics_file is None:
        outcome = run(plan, base_env, speaker, console, inbox=process.inbox)
    else:
        from functools import partial

        from hpclaunch.spawner.record import recorded_run

        outcome = recorded_run(plan, base_env, speaker, console,
                               partial(run, inbox=process.inbox))
    if outcome.fatal_signal is not None and console.abandoned is None:
        # Asked to stop from outside: nothing more waits on a console that does not read.
        import signal

        console.abandon(f"stopped by {signal.Signals(outcome.fatal_signal).name}")
    return outcome


def finish(exit_code: int, world: Optional[World] = None) -> None:
    """Let the world's adapter end what it holds, by the final exit status.

    Call it once, last, with the status the program exits with. Only the MPI adapter does
    anything among the built-ins: ``MPI_Finalize`` on 0, else ``MPI_Abort``, which ends
    every node's launcher (and so every node's workers) and does not return. It acts
    whenever MPI is initialised in this process, also when ``world`` is None (a world whose
    detection failed half-way); a plug-in's ``finish`` is called when ``world`` is its.
    """
    names = ["mpi"] if "mpi4py.MPI" in sys.modules else []
    if world is not None and world.source not in names and world.source != "api":
        names.insert(0, world.source)
    for name in names:
        adapters.load(name).finish(exit_code)


# --------------------------------------------------------------------------- helpers


def _with_fields(options: Any, fields: Mapping[str, Any]) -> Any:
    """``options`` with the keywords a caller gave instead of the object; an unknown one is a
    TypeError, as a misspelt keyword argument is."""
    unknown = sorted(set(fields) - set(options._fields))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    return options._replace(**fields) if fields else options


def _split_fields(
    output: OutputOptions, launch: LaunchOptions, fields: Mapping[str, Any]
) -> tuple[OutputOptions, LaunchOptions]:
    """Keywords named like :class:`OutputOptions`' or :class:`LaunchOptions`' fields, applied."""
    mine = {k: v for k, v in fields.items() if k in OutputOptions._fields}
    rest = {k: v for k, v in fields.items() if k not in mine}
    if "ranks_filter" in mine and mine["ranks_filter"] is not None:
        mine["ranks_filter"] = frozenset(mine["ranks_filter"])
    if "bind_cores" in rest and rest["bind_cores"] is not None:
        rest["bind_cores"] = tuple(rest["bind_cores"])
    return _with_fields(output, mine), _with_fields(launch, rest)


def _check_plan_options(world: World, output: OutputOptions, launch: LaunchOptions) -> None:
    output.check(world.world_size)
    launch.check()
    if launch.bind_cores is not None:
        allowed = os.sched_getaffinity(0)
        outside = [c for c in launch.bind_cores if c not in allowed]
        if outside:
            raise UsageError(
                f"--bind_core_list names cores {_short(outside)} this launcher may not use "
                f"(allowed: {_short(sorted(allowed))})"
            )


def _short(values: Iterable[int], most: int = 16) -> str:
    """A list for one line: the first ``most`` values, then how many more."""
    shown = list(values)
    text = ", ".join(map(str, shown[:most]))
    return f"[{text}{f', ... ({len(shown)} in all)' if len(shown) > most else ''}]"


def _bind_numa(plan: LaunchPlan, env: Mapping[str, str], reporter: Reporter) -> LaunchPlan:
    """``--numa_binding``: read this machine (or a recorded one, for tests), plan, report.

    The allowed CPUs are the launcher's own affinity, which Slurm's cpuset cgroup and
    ``--cpu-bind`` or a ``taskset`` already narrowed. libc is loaded here, before any fork,
    when a worker's memory is to be bound.
    """
    from hpclaunch.machine.gpus import root_of
    from hpclaunch.machine.topology import read_topology
    from hpclaunch.model.binding import bind_plan
    from hpclaunch.spawner.child import memory_binding_unavailable

    mode = plan.launch.numa_binding
    root = root_of(env)
    allowed = frozenset(os.sched_getaffinity(0))
    topology = read_topology(root, env.get("CUDA_DEVICE_ORDER"))
    plan, lines, warnings = bind_plan(plan, mode, topology, env, allowed, root)
    if any(spec.mem_node is not None for spec in plan.workers):
        why = memory_binding_unavailable()  # also loads libc, before any fork
        if why:
            warnings.append(f"memory binding is not available here ({why}): workers' CPUs "
                            "are bound, their memory is not")
            plan = plan._replace(workers=tuple(s._replace(mem_node=None) for s in plan.workers))
            lines = [line.replace(", memory node ", ", memory unbound, near node ")
                     for line in lines]
    for warning in warnings:
        reporter.warning(warning)
    reporter.emit(DEBUG, lines)
    return plan


__all__ = ["detect_world", "finish", "launch", "plan", "resolve_command"]
