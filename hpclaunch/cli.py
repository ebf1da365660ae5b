"""Command line: parse flags, then adapter -> World -> plan -> spawner. Nothing else lives here.

Launcher flags end at the first word that is not a launcher flag (or at ``--``); that word
is the training script and everything after it is the script's, untouched. Flags are never
matched by prefix: DeepSpeed's and torchrun's argparse turn ``train.py --n 4`` into an
error, and a script flag that happens to abbreviate a launcher flag is silently stolen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import (
    TYPE_CHECKING,
    Callable,
    Dict,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    TextIO,
    Tuple,
)

from hpclaunch import __version__
from hpclaunch.adapters import ADAPTER_NAMES, WorldOptions, select
from hpclaunch.errors import UsageError
from hpclaunch.world import is_decimal

if TYPE_CHECKING:
    from hpclaunch.spawner.plan import Command, LaunchPlan
    from hpclaunch.spawner.report import Outcome

HELP_EXAMPLES = """examples:
  hpclaunch --nproc_per_node 4 train.py --epochs 3      this machine, 4 workers
  srun --ntasks-per-node=1 hpclaunch train.py           one per Slurm node
  mpirun -npernode 1 hpclaunch train.py                 one per MPI host
  hpclaunch --world_info=W --node_rank=1 --master_addr=A train.py   DeepSpeed style
  hpclaunch --dry-run train.py                          show the plan, start nothing

Everything after the training script is passed to it untouched.
Exit status: 0 all workers succeeded; c the first failed worker's code; 128+s a signal;
2 bad invocation (nothing started)."""

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see 'hpclaunch --help')")


def _flag(parser: argparse._ActionsContainer, name: str, **kwargs: object) -> None:
    """A DeepSpeed-spelled flag plus its dashed alias (``--node_rank`` and ``--node-rank``)."""
    names = [name]
    dashed = name.replace("_", "-")
    if dashed != name:
        names.append(dashed)
    parser.add_argument(*names, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hpclaunch",
        usage="hpclaunch [launcher options] training_script [training_script_args ...]",
        description="Start this node's workers of a distributed PyTorch job "
        "(a drop-in for deepspeed.launcher.launch).",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=HELP_EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"hpclaunch {__version__}")
    world = parser.add_argument_group("world")
    world.add_argument("--adapter", choices=ADAPTER_NAMES, default="auto",
                       help="where the world comes from (default: auto-detect)")
    _flag(world, "--node_rank", type=int, default=None, help="this node's index in world_info")
    _flag(world, "--master_addr", default=None, help="address of the node with rank 0")
    _flag(world, "--master_port", type=int, default=None, help="rendezvous TCP port")
    _flag(world, "--world_info", default=None,
          help="base64 JSON {host: [slot ids]} (DeepSpeed format), or @FILE")
    _flag(world, "--nproc_per_node", type=int, default=None,
          help="workers per node when the world does not list slots")
    proc = parser.add_argument_group("process")
    proc.add_argument("--module", action="store_true", help="run 'python -m training_script'")
    _flag(proc, "--no_python", action="store_true", help="exec training_script directly")
    _flag(proc, "--no_local_rank", action="store_true", help="do not pass --local_rank=N")
    _flag(proc, "--save_pid", type=int, default=0,
          help="write this launcher's PID to $TMPDIR/<PID>.deepspeed")
    _flag(proc, "--bind_cores_to_rank", action="store_true",
          help="pin each worker to its own share of the allowed cores")
    _flag(proc, "--bind_core_list", default=None, help="cores to share out, e.g. 0-7,16-23")
    _flag(proc, "--kill_timeout", type=float, default=15.0,
          help="seconds between SIGTERM and SIGKILL at teardown (default 15)")
    _flag(proc, "--dry_run", action="store_true", help="print the plan as JSON and exit")
    logs = parser.add_argument_group("logging")
    _flag(logs, "--enable_each_rank_log", default=None,
          help="write each rank's stdout+stderr to DIR/<timestamp>_rank<R>.log")
    _flag(logs, "--log_level", default="info", help="debug, info, warning, error")
    logs.add_argument("-q", "--quiet", action="store_true", help="same as --log_level error")
    _flag(logs, "--no_prefix", action="store_true",
          help="pass workers' console output through raw, without [rank<R>]: prefixes")
    _flag(logs, "--ranks_filter", default=None,
          help="show only these ranks' console output, e.g. 0,3 (others are discarded)")
    elastic = parser.add_argument_group("elastic")
    _flag(elastic, "--enable_elastic_training", action="store_true",
          help="run workers under torch's elastic agent")
    _flag(elastic, "--min_elastic_nodes", type=int, default=-1)
    _flag(elastic, "--max_elastic_nodes", type=int, default=-1)
    _flag(elastic, "--max_restarts", type=int, default=None)
    _flag(elastic, "--rdzv_conf", default=None,
          help="c10d rendezvous settings, e.g. last_call_timeout=5,join_timeout=600")
    return parser


def _option_table(parser: argparse.ArgumentParser) -> Dict[str, bool]:
    """Every launcher option string -> whether it takes a value."""
    table: Dict[str, bool] = {}
    for action in parser._actions:
        for option in action.option_strings:
            table[option] = action.nargs != 0
    return table


def split_argv(
    argv: Sequence[str], table: Dict[str, bool]
) -> Tuple[List[str], Optional[str], List[str]]:
    """(launcher tokens as ``--flag=value``, script, script args). Exact matches only."""
    launcher: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            i += 1
            break
        if not token.startswith("-") or token == "-":
            break
        name, eq, value = token.partition("=")
        if name not in table:
            raise UsageError(
                f"unknown launcher flag {name!r}: put launcher flags before the training script "
                "(see 'hpclaunch --help')"
            )
        if table[name] and not eq:
            if i + 1 >= len(argv):
                raise UsageError(f"flag {name} needs a value")
            value = argv[i + 1]
            i += 1
        launcher.append(f"{name}={value}" if table[name] else name)
        i += 1
    if i >= len(argv):
        return launcher, None, []
    return launcher, argv[i], list(argv[i + 1 :])


def _none_if_none(value: Optional[str]) -> Optional[str]:
    """DeepSpeed's runner passes the string "None" for options that are not given."""
    return None if value is None or value == "None" else value


def resolve_command(args: argparse.Namespace, script: str, script_args: List[str]) -> Command:
    from hpclaunch.spawner.plan import Command

    if args.module and args.no_python:
        raise UsageError("--module and --no_python exclude each other: pick one")
    if args.no_python:
        path = script if os.sep in script else shutil.which(script)
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
        return Command(script=os.path.abspath(path), args=tuple(script_args), mode="exec",
                       pass_local_rank=not args.no_local_rank)
    if args.module:
        if not all(part.isidentifier() for part in script.split(".")):
            raise UsageError(f"--module needs a dotted module name, got {script!r}")
        return Command(script=script, args=tuple(script_args), mode="module",
                       python=sys.executable, pass_local_rank=not args.no_local_rank)
    if not os.path.isfile(script):
        raise UsageError(
            f"training script {script!r} not found: give the path of a Python script "
            "(or --module for a module, --no_python for an executable)"
        )
    return Command(script=script, args=tuple(script_args), mode="python",
                   python=sys.executable, pass_local_rank=not args.no_local_rank)


def _validate(args: argparse.Namespace) -> None:
    if not 0 <= args.kill_timeout <= 86400:  # also refuses nan (every comparison is False)
        raise UsageError(f"--kill_timeout {args.kill_timeout:g}: give seconds from 0 to 86400")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise UsageError(f"--nproc_per_node {args.nproc_per_node} must be at least 1")
    if args.node_rank is not None and args.node_rank < 0:
        raise UsageError(f"--node_rank {args.node_rank} must be >= 0")
    if args.master_port is not None and not 1 <= args.master_port <= 65535:
        raise UsageError(f"--master_port {args.master_port} is out of range: use 1..65535")
    if args.save_pid < 0:
        raise UsageError(f"--save_pid {args.save_pid} must be a PID (>= 0; 0 = off)")
    if args.log_level.lower() not in LOG_LEVELS:
        raise UsageError(f"--log_level {args.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    if args.ranks_filter is not None:
        parse_ranks_filter(args.ranks_filter)


def parse_ranks_filter(text: str) -> frozenset[int]:
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(is_decimal(p) for p in parts):
        raise UsageError(f"--ranks_filter {text!r}: give global ranks like 0,3")
    return frozenset(int(p) for p in parts)


def banner(plan: LaunchPlan, log_dir: Optional[str]) -> str:
    """One line that says which world this node joined, for the top of a job's log."""
    world = plan.world
    ranks = [w.rank for w in plan.workers]
    span = f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])
    return (
        f"{plan.adapter} world: node {world.node_rank}/{world.num_nodes} ({plan.host}), "
        f"{len(ranks)} worker(s), ranks {span} of {world.world_size}, "
        f"master {world.master_addr}:{world.master_port}, "
        f"output: {log_dir if log_dir else 'console'}"
    )


def _use_color(stream: TextIO, env: Dict[str, str]) -> bool:
    """Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def _make_log(level: int):  # type: ignore[no-untyped-def]
    def log(message: str) -> None:
        if level <= LOG_LEVELS["info"]:
            sys.stderr.write(f"hpclaunch: {message}\n")
            sys.stderr.flush()

    return log


def _main(argv: Sequence[str], finishers: Optional[List[Callable[[int], None]]] = None) -> int:
    parser = build_parser()
    launcher_tokens, script, script_args = split_argv(argv, _option_table(parser))
    args = parser.parse_args(launcher_tokens)
    if script is None:
        raise UsageError(
            "missing training script: hpclaunch [launcher options] train.py [script args]"
        )
    args.world_info = _none_if_none(args.world_info)
    args.enable_each_rank_log = _none_if_none(args.enable_each_rank_log)
    _validate(args)
    command = resolve_command(args, script, script_args)
    env = dict(os.environ)
    options = WorldOptions(
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        world_info=args.world_info,
        nproc_per_node=args.nproc_per_node,
    )
    adapter = select(env, options, args.adapter)
    finish = getattr(adapter, "finish", None)
    if finishers is not None and finish is not None:
        finishers.append(finish)
    world = adapter.world(env, options)

    from hpclaunch.spawner.plan import build_plan, parse_core_list

    bind: Optional[Tuple[int, ...]] = None
    if args.bind_cores_to_rank:
        if args.bind_core_list:
            bind = parse_core_list(args.bind_core_list)
            allowed = os.sched_getaffinity(0)
            outside = [c for c in bind if c not in allowed]
            if outside:
                raise UsageError(
                    f"--bind_core_list names cores {outside} this launcher may not use "
                    f"(allowed: {sorted(allowed)})"
                )
        else:
            bind = tuple(sorted(os.sched_getaffinity(0)))
    log_dir = os.path.abspath(args.enable_each_rank_log) if args.enable_each_rank_log else None
    plan = build_plan(
        adapter.name,
        world,
        command,
        log_dir=log_dir,
        log_timestamp=time.strftime("%Y%m%d%H%M%S"),
        bind_cores=bind,
    )
    if args.dry_run:
        shown = plan.to_json()
        if args.enable_elastic_training:
            from hpclaunch.spawner import elastic

            shown["elastic"] = elastic.describe(plan, elastic.options_from_args(args, command))
        sys.stdout.write(json.dumps(shown) + "\n")
        sys.stdout.flush()
        return 0

    from hpclaunch.adapters.mpi_identity import is_mpi_identity_var
    from hpclaunch.spawner import RunOptions, run
    from hpclaunch.spawner.files import pid_file_path
    from hpclaunch.spawner.report import failure_summary

    level = LOG_LEVELS["error"] if args.quiet else LOG_LEVELS[args.log_level.lower()]
    log = _make_log(level)
    from hpclaunch import reporter

    reporter.install(reporter.Reporter(level))
    launch: Callable[[LaunchPlan, RunOptions, Mapping[str, str]], Outcome] = run
    if args.enable_elastic_training:
        from hpclaunch.spawner import elastic

        launch = elastic.runner(elastic.options_from_args(args, command))
    from hpclaunch.spawner import preflight

    preflight.check(plan, not args.no_prefix and world.world_size > 1 and launch is run,
                    parse_ranks_filter(args.ranks_filter) if args.ranks_filter else None,
                    explicit_port=args.master_port is not None)
    outcome = launch(
        plan,
        RunOptions(
            kill_timeout=args.kill_timeout,
            pid_file=pid_file_path(args.save_pid, env) if args.save_pid else None,
            log=log,
            banner=banner(plan, log_dir),
            prefix_output=not args.no_prefix and world.world_size > 1,
            ranks_filter=parse_ranks_filter(args.ranks_filter) if args.ranks_filter else None,
        ),
        # Workers are not the processes an MPI launcher started: an inherited PMI/PMIx
        # identity would make a worker's MPI_Init claim to be this launcher's rank.
        {k: v for k, v in env.items() if not is_mpi_identity_var(k)},
    )
    if outcome.failure is not None:
        lines = failure_summary(outcome.failure)
        if _use_color(sys.stderr, env):
            lines[0] = f"\033[1;31m{lines[0]}\033[0m"
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
    return outcome.exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    finishers: List[Callable[[int], None]] = []
    try:
        status = _main(sys.argv[1:] if argv is None else list(argv), finishers)
    except UsageError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"hpclaunch: error: {message}\n")
        sys.stderr.flush()
        status = 2
    # An adapter with ``finish`` (MPI) ends its job by the exit status: under mpirun a
    # non-zero status must abort every node's launcher, not only this one.
    for finish in finishers:
        finish(status)
    return status

