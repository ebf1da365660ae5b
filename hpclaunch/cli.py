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
from typing import (
    TYPE_CHECKING,
    Dict,
    FrozenSet,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Tuple,
)

from hpclaunch import __version__, api
from hpclaunch.adapters import ADAPTER_NAMES
from hpclaunch.errors import OutputError, UsageError
from hpclaunch.fast import terminal_columns
from hpclaunch.model.world import World, is_decimal
from hpclaunch.options import (
    NUMA_MODES,
    ElasticOptions,
    LaunchOptions,
    OutputOptions,
    WorldOptions,
    check_cpu_choice,
)
from hpclaunch.reporter import CRITICAL, ERROR, LEVELS, Reporter, reopen_closed_standard_fds
from hpclaunch.spawner.inbox import SignalInbox, hold_signals
from hpclaunch.spawner.process import LauncherProcess

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

    from hpclaunch.model.plan import Command, LaunchPlan
    from hpclaunch.spawner.report import Outcome

HELP_EXAMPLES = """examples:
  hpclaunch --nproc_per_node 4 train.py --epochs 3      this machine, 4 workers
  srun --ntasks-per-node=1 hpclaunch train.py           one per Slurm node
  mpirun -npernode 1 hpclaunch train.py                 one per MPI host
  hpclaunch --world_info=W --node_rank=1 --master_addr=A train.py   DeepSpeed style
  hpclaunch --dry-run train.py                          show the plan, start nothing

Everything after the training script is passed to it untouched.
Exit status: 0 all workers succeeded; c the first failed worker's code; 128+s a signal;
124 stalled (--stall_timeout); 2 bad invocation (nothing started).
SIGQUIT (Ctrl-\\) prints every local rank's stack; the job goes on."""

LOG_LEVELS = LEVELS

#: ``--adapter``'s metavar before plug-ins are listed (``--help`` lists them).
_ADAPTER_METAVAR = "{" + ",".join(ADAPTER_NAMES) + ",...}"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    #: ``--help`` and ``--version`` go through :class:`hpclaunch.stdout.Stdout` (argparse
    #: itself swallows a write error); None: print as argparse does (a test's parser).
    stdout_closed: Optional[bool] = None

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see 'hpclaunch --help')")

    def _print_message(self, message: str, file: Optional[SupportsWrite[str]] = None) -> None:
        if message and self.stdout_closed is not None and (file is None or file is sys.stdout):
            from hpclaunch.stdout import Stdout

            Stdout("hpclaunch's output", self.stdout_closed).write(message)
        else:
            super()._print_message(message, file)

    def format_help(self) -> str:
        """List installed adapter plug-ins among ``--adapter``'s choices: only ``--help``
        pays for looking them up."""
        from hpclaunch.adapters import adapter_names

        for action in self._actions:
            if "--adapter" in action.option_strings:
                action.metavar = "{" + ",".join(adapter_names()) + "}"
        return super().format_help()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, its width measured by :func:`hpclaunch.fast.terminal_columns`
    (argparse builds one per ``add_argument`` only to check the flag, and would import
    ``shutil`` for the terminal's width)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


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
    _flag(proc, "--numa_binding", choices=NUMA_MODES, default="none",
          help="bind each worker's CPUs and memory to the NUMA node (or socket) nearest its "
          "GPU; exclusive: split that node's CPUs between its workers (default none)")
    _flag(proc, "--kill_timeout", type=float, default=15.0,
          help="seconds between SIGTERM and SIGKILL at teardown (default 15)")
    _flag(proc, "--stall_timeout", type=float, default=None, metavar="SECONDS",
          help="when no rank of this node has made progress (output, or a touch of "
          "$HPCLAUNCH_HEARTBEAT_FILE) for SECONDS: dump every rank's stack, stop the job, "
          "exit 124 (default: off)")
    _flag(proc, "--no_stack_dumps", action="store_true",
          help="no stack-dump handler in the workers (SIGQUIT and a stall then report "
          "process states only)")
    _flag(proc, "--no_scheduler_end", action="store_true",
          help="when a worker here fails, do not ask Slurm to end the job step on every "
          "node (for steps whose tasks are meant to outlive each other)")
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
    _flag(logs, "--event_log", default=None, metavar="PATH",
          help="append one JSON line per launch event to PATH ({node_rank}, {host}, {run_id} "
          "are filled in; schema: docs/events.md)")
    _flag(logs, "--metrics_file", default=None, metavar="PATH",
          help="keep Prometheus metrics in PATH (node_exporter's textfile collector), "
          "rewritten atomically every few seconds and at the end")
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


def parse_ranks_filter(text: str) -> FrozenSet[int]:
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(is_decimal(p) for p in parts):
        raise UsageError(f"--ranks_filter {text!r}: give global ranks like 0,3")
    return frozenset(int(p) for p in parts)


class Invocation:
    """One command line, parsed once into the API's options."""

    def __init__(self, world: WorldOptions, output: OutputOptions, launch: LaunchOptions,
                 elastic: Optional[ElasticOptions], command: Command, dry_run: bool,
                 reporter: Reporter) -> None:
        self.world = world
        self.output = output
        self.launch = launch
        self.elastic = elastic
        self.command = command
        self.dry_run = dry_run
        self.reporter = reporter


def _parse(
    argv: Sequence[str], stdout_closed: bool = False
) -> Tuple[argparse.Namespace, str, List[str]]:
    """(flags, training script, its arguments); DeepSpeed's "None" spelling means not given."""
    parser = build_parser()
    if isinstance(parser, _Parser):
        parser.stdout_closed = stdout_closed
    launcher_tokens, script, script_args = split_argv(argv, _option_table(parser))
    args = parser.parse_args(launcher_tokens)
    if script is None:
        raise UsageError(
            "missing training script: hpclaunch [launcher options] train.py [script args]"
        )
    args.world_info = _none_if_none(args.world_info)
    args.enable_each_rank_log = _none_if_none(args.enable_each_rank_log)
    return args, script, script_args


def _reporter(args: argparse.Namespace, env: Mapping[str, str]) -> Reporter:
    """The one voice of this process, at the level --log_level/--quiet asked for; colour
    only for a person at a terminal, and never when NO_COLOR is set (no-color.org)."""
    if args.log_level.lower() not in LOG_LEVELS:
        raise UsageError(f"--log_level {args.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    level = LOG_LEVELS["error"] if args.quiet else LOG_LEVELS[args.log_level.lower()]
    color = os.isatty(2) and not env.get("NO_COLOR") and env.get("TERM") != "dumb"
    return Reporter(level, color=color)


def _bind_cores(args: argparse.Namespace) -> Optional[Tuple[int, ...]]:
    """The cores --bind_cores_to_rank shares out: --bind_core_list, else all allowed ones."""
    if not args.bind_cores_to_rank:
        return None
    if args.bind_core_list:
        from hpclaunch.model.binding import parse_core_list

        return parse_core_list(args.bind_core_list)
    return tuple(sorted(os.sched_getaffinity(0)))


def _invocation(
    argv: Sequence[str], env: Mapping[str, str], stdout_closed: bool = False
) -> Invocation:
    """Every flag into its options group, once; the API checks what it is given."""
    args, script, script_args = _parse(argv, stdout_closed)
    voice = _reporter(args, env)
    if args.save_pid < 0:
        raise UsageError(f"--save_pid {args.save_pid} must be a PID (>= 0; 0 = off)")
    check_cpu_choice(args.numa_binding, args.bind_cores_to_rank, args.bind_core_list)
    pid_file = None
    if args.save_pid:
        from hpclaunch.spawner.pidfile import pid_file_path

        pid_file = pid_file_path(args.save_pid, env)
    launch = LaunchOptions(
        kill_timeout=args.kill_timeout,
        pid_file=pid_file,
        bind_cores=_bind_cores(args),
        numa_binding=args.numa_binding,
        stall_timeout=args.stall_timeout,
        stack_dumps=not args.no_stack_dumps,
        scheduler_end=not args.no_scheduler_end,
    )
    launch.check()  # before the world: under MPI a bad value must not cost an allgather
    elastic = None
    if not args.enable_elastic_training:
        _refuse_elastic_only_flags(args)
    if args.enable_elastic_training:
        elastic = ElasticOptions(
            min_nodes=args.min_elastic_nodes,
            max_nodes=args.max_elastic_nodes,
            max_restarts=args.max_restarts,
            rendezvous_conf=args.rdzv_conf,
        )
    return Invocation(
        world=WorldOptions(
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
            world_info=args.world_info,
            nproc_per_node=args.nproc_per_node,
            adapter=args.adapter,
        ),
        output=OutputOptions(
            log_dir=args.enable_each_rank_log,
            raw_output=args.no_prefix,
            ranks_filter=(
                parse_ranks_filter(args.ranks_filter) if args.ranks_filter is not None else None
            ),
            event_log=args.event_log,
            metrics_file=args.metrics_file,
        ),
        launch=launch,
        elastic=elastic,
        command=api.resolve_command(
            script,
            script_args,
            module=args.module,
            no_python=args.no_python,
            local_rank=not args.no_local_rank,
        ),
        dry_run=args.dry_run,
        reporter=voice,
    )


def _refuse_elastic_only_flags(args: argparse.Namespace) -> None:
    """Elastic mode's flags without it would be silently ignored: a job the user believes
    restarts (``--max_restarts 2``) would not."""
    given = [
        flag for flag, value in (
            (f"--max_restarts {args.max_restarts}", args.max_restarts not in (None, 0)),
            (f"--min_elastic_nodes {args.min_elastic_nodes}", args.min_elastic_nodes != -1),
            (f"--max_elastic_nodes {args.max_elastic_nodes}", args.max_elastic_nodes != -1),
            ("--rdzv_conf", args.rdzv_conf is not None),
        ) if value
    ]
    if given:
        raise UsageError(
            f"{given[0]} applies to elastic mode only (static mode never restarts a worker): "
            "add --enable_elastic_training, or drop it"
        )


def _report(outcome: Outcome, voice: Reporter) -> None:
    """Why the launch failed, if it did: the failed worker's summary, or the launcher's error."""
    if outcome.failure is not None:
        from hpclaunch.spawner.report import failure_summary

        voice.emit(ERROR, failure_summary(outcome.failure), highlight=True)
    elif outcome.error:
        voice.emit(ERROR, [outcome.error], highlight=True)


class _Stopped(Exception):
    """A SIGINT/TERM/HUP arrived before any worker started: nothing more is started."""

    def __init__(self, sig: int) -> None:
        super().__init__(sig)
        self.sig = sig


class _Run:
    """What :func:`main` needs to end the run: the voice and the world (once known)."""

    def __init__(self, process: LauncherProcess, stdout_closed: bool = False) -> None:
        self.process = process
        self.reporter = Reporter()
        self.world: Optional[World] = None
        #: fd 1 was closed at start-up: what goes to stdout cannot reach anyone.
        self.stdout_closed = stdout_closed

    def __call__(self, argv: Sequence[str]) -> int:
        env = dict(os.environ)
        job = _invocation(argv, env, self.stdout_closed)
        self.reporter = job.reporter
        self.stop_if_asked()
        self.world = api.detect_world(env, job.world, reporter=job.reporter)
        plan: LaunchPlan = api.plan(
            self.world, job.command, output=job.output, launch=job.launch,
            elastic=job.elastic, env=env, reporter=job.reporter,
        )
        self.stop_if_asked()
        if job.dry_run:
            from hpclaunch.model.plan import write_plan
            from hpclaunch.stdout import Stdout

            write_plan(plan.to_json(), Stdout("the plan", self.stdout_closed))
            return 0
        outcome = api.launch(plan, env=env, reporter=job.reporter, process=self.process)
        # Through the console, after every byte of the workers' output it still holds.
        _report(outcome, job.reporter.through(self.process.console().message))
        return outcome.exit_code

    def stop_if_asked(self) -> None:
        """Before starting anything: a SIGINT/TERM/HUP that arrived so far ends the run."""
        sig = self.process.stop_signal()
        if sig is not None:
            raise _Stopped(sig)


def main(argv: Optional[Sequence[str]] = None, signals: Optional[SignalInbox] = None) -> int:
    """The ``hpclaunch`` command. ``signals``: held by the caller since its first line
    (``hpclaunch.__main__``, the entry point); else held here, first thing, and given back."""
    inbox = signals if signals is not None else hold_signals()
    try:
        return _main(argv, LauncherProcess(inbox))
    finally:
        if signals is None:
            inbox.uninstall()


def _main(argv: Optional[Sequence[str]], process: LauncherProcess) -> int:
    closed = reopen_closed_standard_fds()
    run = _Run(process, stdout_closed=1 in closed)
    try:
        status = run(sys.argv[1:] if argv is None else list(argv))
    except UsageError as exc:
        run.reporter.emit(CRITICAL, [f"error: {' '.join(str(exc).split())}"])
        status = 2
    except OutputError as exc:
        run.reporter.emit(CRITICAL, [f"error: {exc}"])
        status = 1
    except _Stopped as stop:
        import signal

        run.reporter.info(f"got {signal.Signals(stop.sig).name} before any worker started: "
                          "stopping")
        status = 128 + stop.sig
    finally:
        process.close_console()  # everything delivered (or a signal said stop) before exit
    # An adapter that holds something until exit (MPI) ends it by the exit status: under
    # mpirun a non-zero status must abort every node's launcher, not only this one.
    try:
        api.finish(status, run.world)
    except UsageError as exc:  # a plug-in's finish() failed
        run.reporter.error(" ".join(str(exc).split()))
        status = status or 2
    return status
