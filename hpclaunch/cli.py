"""Command line: parse flags, then the public API's calls (:mod:`hpclaunch.api`): detect_world,
plan, then a dry run or launch. Nothing else lives here.

Launcher flags end at the first word that is not a launcher flag (or at ``--``); that word
is the training script and everything after it is the script's, untouched. Flags are never
matched by prefix: DeepSpeed's and torchrun's argparse turn ``train.py --n 4`` into an
error, and a script flag that happens to abbreviate a launcher flag is silently stolen.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Dict, List, NoReturn, Optional, Sequence, Tuple

from hpclaunch import __version__, api, reporter
from hpclaunch.adapters import ADAPTER_NAMES, WorldOptions
from hpclaunch.errors import UsageError
from hpclaunch.world import is_decimal

if TYPE_CHECKING:
    from hpclaunch.spawner.elastic.config import ElasticOptions
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

LOG_LEVELS = reporter.LEVELS

#: ``--adapter``'s metavar before plug-ins are listed (``--help`` lists them).
_ADAPTER_METAVAR = "{" + ",".join(ADAPTER_NAMES) + ",...}"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see 'hpclaunch --help')")

    def format_help(self) -> str:
        """List installed adapter plug-ins among ``--adapter``'s choices: only ``--help``
        pays for looking them up."""
        from hpclaunch.adapters import adapter_names

        for action in self._actions:
            if "--adapter" in action.option_strings:
                action.metavar = "{" + ",".join(adapter_names()) + "}"
        return super().format_help()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter minus its ``import shutil`` (which pulls in bz2 and lzma, ms of
    every start): argparse builds one per ``add_argument`` only to check the flag, and
    shutil would only measure the terminal, which ``os`` does as well."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else the terminal, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if is_decimal(columns) and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # no stdout, or not a terminal
        return 80


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
        formatter_class=_Formatter,
        epilog=HELP_EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"hpclaunch {__version__}")
    world = parser.add_argument_group("world")
    world.add_argument("--adapter", default="auto", metavar=_ADAPTER_METAVAR,
                       help="where the world comes from (default: auto-detect); "
                       "installed plug-ins add their names")
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
    _flag(proc, "--numa_binding", choices=("none", "node", "socket", "exclusive"), default="none",
          help="bind each worker's CPUs and memory to the NUMA node (or socket) nearest its "
          "GPU; exclusive: split that node's CPUs between its workers (default none)")
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
    return api.resolve_command(
        script,
        script_args,
        module=args.module,
        no_python=args.no_python,
        local_rank=not args.no_local_rank,
    )


def _world_options(args: argparse.Namespace) -> WorldOptions:
    return WorldOptions(
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        world_info=args.world_info,
        nproc_per_node=args.nproc_per_node,
    )


def _validate(args: argparse.Namespace) -> None:
    if not 0 <= args.kill_timeout <= 86400:  # also refuses nan (every comparison is False)
        raise UsageError(f"--kill_timeout {args.kill_timeout:g}: give seconds from 0 to 86400")
    _world_options(args).check()
    if args.save_pid < 0:
        raise UsageError(f"--save_pid {args.save_pid} must be a PID (>= 0; 0 = off)")
    if args.log_level.lower() not in LOG_LEVELS:
        raise UsageError(f"--log_level {args.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    #: The parsed --ranks_filter, once (None: show every rank).
    args.ranks = parse_ranks_filter(args.ranks_filter) if args.ranks_filter is not None else None
    if args.numa_binding != "none":
        from hpclaunch import topology

        topology.check_flags(args.numa_binding, args.bind_cores_to_rank, args.bind_core_list)


def parse_ranks_filter(text: str) -> frozenset[int]:
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(is_decimal(p) for p in parts):
        raise UsageError(f"--ranks_filter {text!r}: give global ranks like 0,3")
    return frozenset(int(p) for p in parts)


def _use_color(fd: int, env: Dict[str, str]) -> bool:
    """Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org)."""
    return os.isatty(fd) and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def _install_reporter(args: argparse.Namespace, env: Dict[str, str]) -> None:
    """The one voice of this process, at the level --log_level/--quiet asked for."""
    level = LOG_LEVELS["error"] if args.quiet else LOG_LEVELS[args.log_level.lower()]
    reporter.install(reporter.Reporter(level, color=_use_color(2, env)))


def _parse(argv: Sequence[str]) -> Tuple[argparse.Namespace, str, List[str]]:
    """(flags, training script, its arguments); DeepSpeed's "None" spelling means not given."""
    parser = build_parser()
    launcher_tokens, script, script_args = split_argv(argv, _option_table(parser))
    args = parser.parse_args(launcher_tokens)
    if script is None:
        raise UsageError(
            "missing training script: hpclaunch [launcher options] train.py [script args]"
        )
    args.world_info = _none_if_none(args.world_info)
    args.enable_each_rank_log = _none_if_none(args.enable_each_rank_log)
    return args, script, script_args


def _bind_cores(args: argparse.Namespace) -> Optional[Tuple[int, ...]]:
    """The cores --bind_cores_to_rank shares out: --bind_core_list, else all allowed ones."""
    if not args.bind_cores_to_rank:
        return None
    if args.bind_core_list:
        from hpclaunch.spawner.plan import parse_core_list

        return parse_core_list(args.bind_core_list)
    return tuple(sorted(os.sched_getaffinity(0)))


def _elastic_options(args: argparse.Namespace) -> Optional[ElasticOptions]:
    if not args.enable_elastic_training:
        return None
    from hpclaunch.spawner.elastic.config import ElasticOptions

    return ElasticOptions(
        min_nodes=args.min_elastic_nodes,
        max_nodes=args.max_elastic_nodes,
        max_restarts=args.max_restarts,
        rendezvous_conf=args.rdzv_conf,
    )


def _plan(args: argparse.Namespace, command: Command, env: Dict[str, str]) -> LaunchPlan:
    """The one place the CLI turns flags into a World and a plan."""
    world = api.detect_world(
        env,
        adapter=args.adapter,
        nproc_per_node=args.nproc_per_node,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        world_info=args.world_info,
    )
    _check_ranks_filter(args, world.world_size)
    plan = api.plan(
        world,
        command,
        log_dir=args.enable_each_rank_log,
        bind_cores=_bind_cores(args),
        elastic=_elastic_options(args),
    )
    if args.numa_binding != "none":
        from hpclaunch import topology

        plan = topology.bind_for_this_machine(plan, args.numa_binding, env)
    return plan


def _check_ranks_filter(args: argparse.Namespace, world_size: int) -> None:
    """A filter naming a rank the world does not have is a typo, not a wish for silence."""
    if args.ranks is None:
        return
    highest = max(args.ranks)
    if highest >= world_size:
        raise UsageError(
            f"--ranks_filter {args.ranks_filter}: rank {highest} is not in this "
            f"world of {world_size} rank(s) (0..{world_size - 1})"
        )


def _speak_through_the_console() -> None:
    """From here on every launcher message is a non-blocking console write, in order with the
    workers' relayed output (``main`` flushes and closes the console at the end)."""
    from hpclaunch.spawner import console

    voice = reporter.get()
    reporter.install(
        reporter.Reporter(voice.level, console.get().message, voice.color, console.close)
    )


def _launch(args: argparse.Namespace, plan: LaunchPlan, env: Dict[str, str]) -> Outcome:
    """The one place the CLI runs a plan."""
    from hpclaunch.spawner.files import pid_file_path

    _speak_through_the_console()
    voice = reporter.get()
    if voice.enabled(reporter.DEBUG):
        import json

        voice.debug(f"plan: {json.dumps(plan.to_json())}")
    return api.launch(
        plan,
        env=env,
        kill_timeout=args.kill_timeout,
        pid_file=pid_file_path(args.save_pid, env) if args.save_pid else None,
        prefix_output=plan.world.world_size > 1,
        raw_output=args.no_prefix,
        ranks_filter=args.ranks,
        explicit_port=args.master_port is not None,
    )


def _report(outcome: Outcome) -> None:
    """Why the launch failed, if it did: the failed worker's summary, or the launcher's error."""
    voice = reporter.get()
    if outcome.failure is not None:
        from hpclaunch.spawner.report import failure_summary

        voice.emit(reporter.ERROR, failure_summary(outcome.failure), highlight=True)
    elif outcome.error:
        voice.emit(reporter.ERROR, [outcome.error], highlight=True)


def _main(argv: Sequence[str]) -> int:
    args, script, script_args = _parse(argv)
    _validate(args)
    env = dict(os.environ)
    _install_reporter(args, env)
    command = resolve_command(args, script, script_args)
    plan = _plan(args, command, env)
    if args.dry_run:
        from hpclaunch.spawner.plan import write_plan

        write_plan(plan.to_json(), sys.stdout)
        return 0
    outcome = _launch(args, plan, env)
    _report(outcome)
    return outcome.exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    reporter.reopen_closed_standard_fds()
    try:
        status = _main(sys.argv[1:] if argv is None else list(argv))
    except UsageError as exc:
        reporter.get().emit(reporter.CRITICAL, [f"error: {' '.join(str(exc).split())}"])
        status = 2
    finally:
        reporter.get().close()  # what the console still holds, before MPI may abort us
    # An adapter that holds something until exit (MPI) ends it by the exit status: under
    # mpirun a non-zero status must abort every node's launcher, not only this one.
    try:
        api.finish(status)
    except UsageError as exc:  # a plug-in's finish() failed
        reporter.get().error(" ".join(str(exc).split()))
        status = status or 2
    return status
