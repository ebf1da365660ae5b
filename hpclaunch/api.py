"""hpclaunch's public Python API: the command line's pipeline, one call per step.

    world = hpclaunch.detect_world()                  # which world, from which scheduler
    plan = hpclaunch.plan(world, ["train.py", "--epochs", "3"])
    print(plan.to_json())                             # exactly what --dry-run prints
    outcome = hpclaunch.launch(plan)                  # run this node's workers
    hpclaunch.finish(outcome.exit_code)               # last: MPI ends its job by the status

``hpclaunch.cli`` is parsing plus these calls, so a program gets the same choices, checks,
worlds, plans and exit statuses as the command line. Bad input raises
:class:`~hpclaunch.errors.UsageError` (one line: what is wrong, how to fix it) before
anything is spawned. Every launcher message goes through :mod:`hpclaunch.reporter` (info
level to stderr unless a program installs another reporter).

Detecting a world on a Slurm or explicit environment imports no torch, mpi4py, ctypes or
spawner module (a test holds it); planning and launching import the spawner.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

from hpclaunch import adapters, reporter
from hpclaunch.adapters.base import Adapter, BaseAdapter, WorldOptions
from hpclaunch.errors import UsageError
from hpclaunch.world import World

if TYPE_CHECKING:
    from hpclaunch.spawner.elastic.config import ElasticOptions
    from hpclaunch.spawner.plan import Command, LaunchPlan
    from hpclaunch.spawner.report import Outcome

#: The adapters whose ``world`` ran in this process, by name: :func:`launch` asks them for
#: the workers' environment and :func:`finish` lets them end what they hold (MPI).
_used: Dict[str, Adapter] = {}
#: Which adapter built each World :func:`detect_world` returned (a World is a value, so the
#: plan can name its source without the World carrying it); the last few are kept, by
#: identity: hashing a World hashes every host (~12 ms for 131,072 of them).
_sources: Dict[int, Tuple[World, str]] = {}
_SOURCES_KEPT = 16


def detect_world(
    env: Optional[Mapping[str, str]] = None,
    *,
    adapter: str = "auto",
    nproc_per_node: Optional[int] = None,
    node_rank: Optional[int] = None,
    master_addr: Optional[str] = None,
    master_port: Optional[int] = None,
    world_info: Optional[str] = None,
) -> World:
    """The World the command line would launch into, from ``env`` (default ``os.environ``).

    ``adapter`` is ``"auto"`` (explicit if ``world_info`` is given, else Slurm, MPI, an
    installed plug-in, local -- see :mod:`hpclaunch.adapters`) or a name from
    :func:`hpclaunch.adapters.adapter_names`. The keywords are the CLI's flags of the same
    names; ``None`` lets the adapter decide. Under MPI this is a collective call: every
    launcher of the job must make it (one ``allgather``).
    """
    options = WorldOptions(
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        world_info=world_info,
        nproc_per_node=nproc_per_node,
    )
    options.check()
    source = os.environ if env is None else env
    chosen = adapters.select(source, options, adapter)
    _used[chosen.name] = chosen  # before world(): MPI must be ended even if world() fails
    world = chosen.world(source, options)
    for note in chosen.notes():
        reporter.get().info(note)
    _sources[id(world)] = (world, chosen.name)  # the World is kept: its id stays its own
    while len(_sources) > _SOURCES_KEPT:
        del _sources[next(iter(_sources))]
    return world


def _which(name: str) -> Optional[str]:
    """``shutil.which`` for a bare command name: importing shutil pulls in bz2 and lzma,
    milliseconds of every start for one PATH search."""
    search = os.environ.get("PATH", os.defpath)
    for directory in search.split(os.pathsep) if search else ():
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


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
    import sys

    from hpclaunch.spawner.plan import Command

    if module and no_python:
        raise UsageError("--module and --no_python exclude each other: pick one")
    if no_python:
        path = script if os.sep in script else _which(script)
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


def _check_cores(cores: Sequence[int]) -> None:
    allowed = os.sched_getaffinity(0)
    outside = [c for c in cores if c not in allowed]
    if outside:
        raise UsageError(
            f"--bind_core_list names cores {outside} this launcher may not use "
            f"(allowed: {sorted(allowed)})"
        )


def plan(
    world: World,
    command: Union[Command, Sequence[str]],
    *,
    adapter: Optional[str] = None,
    log_dir: Optional[str] = None,
    log_timestamp: Optional[str] = None,
    bind_cores: Optional[Sequence[int]] = None,
    elastic: Optional[ElasticOptions] = None,
) -> LaunchPlan:
    """This node's workers: each one's argv, environment, log file and cores. Pure but for
    the checks; spawns nothing.

    ``command`` is a :func:`resolve_command` or ``[script, *args]`` (a Python script). ``adapter``
    names the world's source in the plan (default: the adapter :func:`detect_world` used).
    ``log_dir`` turns on per-rank logs (``--enable_each_rank_log``), named with
    ``log_timestamp`` (default: now, ``%Y%m%d%H%M%S``). ``bind_cores`` shares these cores out
    among the workers (``--bind_cores_to_rank``). ``elastic`` runs the workers under torch's
    elastic agent. ``plan(...).to_json()`` is what ``--dry-run`` prints.
    """
    from hpclaunch.spawner.plan import Command, build_plan

    if not isinstance(command, Command):
        argv = [command] if isinstance(command, str) else list(command)
        if not argv:
            raise UsageError("the command is empty: give at least the training script")
        command = resolve_command(argv[0], argv[1:])
    if bind_cores is not None:
        _check_cores(bind_cores)
    the_plan = build_plan(
        adapter or _source_of(world),
        world,
        command,
        log_dir=os.path.abspath(log_dir) if log_dir else None,
        log_timestamp=time.strftime("%Y%m%d%H%M%S") if log_timestamp is None else log_timestamp,
        bind_cores=bind_cores,
    )
    if elastic is None:
        return the_plan
    from dataclasses import replace

    from hpclaunch.spawner.elastic.config import elastic_setup

    return the_plan._replace(
        elastic=elastic_setup(the_plan, replace(elastic, command=command))
    )


def _source_of(world: World) -> str:
    """The adapter that :func:`detect_world` used for this very World, else ``"api"``."""
    known = _sources.get(id(world))
    return known[1] if known is not None and known[0] is world else "api"


def banner(plan: LaunchPlan) -> str:
    """One line that says which world this node joined, for the top of a job's log."""
    world = plan.world
    ranks = [w.rank for w in plan.workers]
    span = f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])
    return (
        f"{plan.adapter} world: node {world.node_rank}/{world.num_nodes} ({plan.host}), "
        f"{len(ranks)} worker(s), ranks {span} of {world.world_size}, "
        f"master {world.master_addr}:{world.master_port}, "
        f"output: {plan.log_dir if plan.log_dir else 'console'}"
    )


def _adapter_for(name: str) -> Adapter:
    """The adapter that built the plan's world, for its worker-environment filter."""
    if name in _used:
        return _used[name]
    if name in adapters.ADAPTERS:
        return adapters.load(name)
    return BaseAdapter()  # a World built by hand: the default filter


def launch(
    plan: LaunchPlan,
    *,
    env: Optional[Mapping[str, str]] = None,
    kill_timeout: float = 15.0,
    pid_file: Optional[str] = None,
    prefix_output: Optional[bool] = None,
    ranks_filter: Optional[Iterable[int]] = None,
    explicit_port: bool = False,
    raw_output: bool = False,
) -> Outcome:
    """Run the plan's workers to the end and return the :class:`Outcome` (never raises for a
    worker's failure: ``outcome.exit_code`` is the contract's exit status).

    Workers inherit ``env`` (default ``os.environ``) as the world's adapter filters it, plus
    the plan's variables. ``kill_timeout`` is the SIGTERM -> SIGKILL wait at teardown;
    ``pid_file`` is written for the launch's duration; ``prefix_output`` (default: more than
    one worker in the world) prefixes console lines with ``[rank<R>]: ``; ``ranks_filter``
    shows only these ranks' console output; ``raw_output`` (``--no_prefix``) lets the shown
    workers write to the console directly, unrelayed (then a failure summary has no output
    tail to quote); ``explicit_port`` says the caller chose the master
    port, so a single-node (local) plan checks that it is free too. Signals to this process
    (SIGINT, SIGTERM, SIGHUP; SIGUSR1/2 forwarded) are handled for the launch's duration, as
    in the CLI.
    Raises :class:`~hpclaunch.errors.UsageError` (nothing spawned) for a bad log directory
    or PID file, a master port in use, too low a file-descriptor limit, or elastic mode
    without torch.
    """
    from hpclaunch.spawner import RunOptions, preflight, run

    source = os.environ if env is None else env
    base_env = _adapter_for(plan.adapter).worker_environment(source)
    options = RunOptions(
        kill_timeout=kill_timeout,
        pid_file=pid_file,
        log=reporter.get().info,
        banner=banner(plan),
        prefix_output=plan.world.world_size > 1 if prefix_output is None else prefix_output,
        ranks_filter=frozenset(ranks_filter) if ranks_filter is not None else None,
        raw_output=raw_output,
    )
    preflight.check(
        plan,
        not raw_output and plan.elastic is None,  # elastic workers write directly
        options.ranks_filter,
        explicit_port=explicit_port,
    )
    if plan.elastic is not None:
        from hpclaunch.spawner.elastic.launcher import run_elastic

        return run_elastic(plan, options, base_env)
    return run(plan, options, base_env)


def finish(exit_code: int) -> None:
    """Let the adapters used in this process end what they hold, by the final exit status.

    Call it once, last, with the status the program exits with. Only the MPI adapter does
    anything today: ``MPI_Finalize`` on 0, else ``MPI_Abort``, which ends every node's
    launcher (and so every node's workers) and does not return.
    """
    used = list(_used.values())
    _used.clear()
    for adapter in used:
        adapter.finish(exit_code)


__all__ = ["banner", "detect_world", "finish", "launch", "plan", "resolve_command"]
