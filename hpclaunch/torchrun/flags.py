"""What each torchrun flag means to hpclaunch: the workers' command, the refusals and notes,
output, the shutdown wait. Decided before anything starts (the command is looked up on the
file system, as ``hpclaunch`` does); :mod:`hpclaunch.torchrun.form` puts them together.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import FrozenSet, List, Mapping, Optional, Tuple

from hpclaunch import api
from hpclaunch.errors import UsageError
from hpclaunch.model.plan import Command
from hpclaunch.model.world import is_decimal
from hpclaunch.torchrun.parser import DEFAULT_SIGNALS

#: torchrun's SIGTERM -> SIGKILL wait when neither the flag nor the variable gives one.
DEFAULT_SHUTDOWN_TIMEOUT = 30


def resolve_command(args: argparse.Namespace, env: Mapping[str, str]) -> Tuple[Command, List[str]]:
    """The workers' command exactly as torchrun builds it, and notes. No ``--local-rank``."""
    notes: List[str] = []
    script, rest = args.training_script, list(args.training_script_args)
    if args.run_path:
        notes.append(
            "--run-path: the script runs as 'python -u SCRIPT' in each worker (the same "
            "sys.argv and __main__), not through runpy in a worker torch spawned"
        )
        command = api.resolve_command(script, rest, local_rank=False)
    elif args.no_python:
        if args.module:
            raise UsageError(
                "--no-python and --module exclude each other (as in torchrun): pick one"
            )
        command = api.resolve_command(script, rest, no_python=True, local_rank=False)
        # The path as torchrun's Popen execs it (relative or a PATH entry joined), so the
        # program's argv[0] is what it would be under torchrun.
        if os.sep in script:
            command = command._replace(script=script)
        else:
            from hpclaunch.fast import which

            command = command._replace(script=which(script) or command.script)
    else:
        command = api.resolve_command(script, rest, module=args.module, local_rank=False)
    if command.mode != "exec":
        command = command._replace(python=env.get("PYTHON_EXEC", sys.executable))
    return command, notes


def check_flags(args: argparse.Namespace) -> List[str]:
    """Refuse what cannot be kept; notes for what is accepted with another meaning."""
    notes: List[str] = []
    if args.logs_specs is not None:
        raise UsageError(
            f"--logs-specs {args.logs_specs}: torchrun's LogsSpecs plug-ins cannot be loaded by "
            "hpclaunch; drop it (-r 3 --log-dir DIR writes each rank's output to a file)"
        )
    for name, value in (("--duplicate-stdout-filters", args.duplicate_stdout_filters),
                        ("--duplicate-stderr-filters", args.duplicate_stderr_filters)):
        if value:
            raise UsageError(f"{name} is not supported by hpclaunch-torchrun: drop it")
    if args.numa_binding == "core-complex":
        raise UsageError(
            "--numa-binding core-complex is not supported: use node, socket or exclusive"
        )
    if args.rdzv_backend not in ("static", "c10d"):
        raise UsageError(
            f"--rdzv-backend {args.rdzv_backend}: hpclaunch-torchrun runs the static and c10d "
            "rendezvous only; use --rdzv-backend c10d"
        )
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts {args.max_restarts} must be >= 0")
    if args.monitor_interval != 0.1:
        notes.append(
            f"--monitor-interval {args.monitor_interval:g} is not used: hpclaunch learns of "
            "each worker's exit at once, without polling"
        )
    if args.start_method != "spawn":
        notes.append(
            f"--start-method {args.start_method} has no effect: workers are programs started "
            "with fork+exec (so it is in torchrun)"
        )
    if args.event_log_handler != "null":
        notes.append(
            f"--event-log-handler {args.event_log_handler} is not used: torch's elastic events "
            "are not emitted by hpclaunch's spawner"
        )
    if args.signals_to_handle != DEFAULT_SIGNALS:
        notes.append(
            f"--signals-to-handle {args.signals_to_handle} is not used: hpclaunch handles "
            "signals its own way (TERM, INT, HUP stop the job; USR1, USR2 are forwarded and "
            "the job goes on; QUIT prints every rank's stack)"
        )
    return notes


def _std_mode(value: str, flag: str) -> str:
    """torchrun's ``Std`` spelling: ``0``..``3`` for all local ranks, or ``rank:mode,...``."""
    text = value.strip()
    if text in ("0", "1", "2", "3"):
        return text
    if all(":" in part for part in text.split(",")):
        return "map"
    raise UsageError(f"{flag} {value!r}: give 0, 1, 2, 3 or local_rank:mode pairs like 0:3,1:1")


def output_options(args: argparse.Namespace) -> Tuple[Optional[str], List[str]]:
    """(per-rank log directory, notes) for ``--log-dir``, ``-r`` and ``-t``."""
    notes: List[str] = []
    redirects = _std_mode(args.redirects, "--redirects")
    tee = _std_mode(args.tee, "--tee")
    if redirects not in ("0", "3"):
        raise UsageError(
            f"--redirects {args.redirects}: hpclaunch writes a rank's stdout and stderr to one "
            "log file, for every rank: use -r 3 --log-dir DIR"
        )
    if tee != "0":
        notes.append(
            f"--tee {args.tee}: the console shows the workers' output; no copy is written to "
            "files (-r 3 --log-dir DIR writes each rank's output to its own file instead)"
        )
    if redirects == "3":
        if not args.log_dir:
            raise UsageError("--redirects 3 needs --log-dir DIR: where each rank's log goes")
        notes.append(
            f"--redirects 3: each rank's stdout and stderr go to {args.log_dir}/"
            "<timestamp>_rank<RANK>.log (hpclaunch's names, not torchrun's attempt_N/ tree)"
        )
        return args.log_dir, notes
    if args.log_dir:
        notes.append(
            f"--log-dir {args.log_dir} without -r 3 is not used: hpclaunch writes no error "
            "files; workers' output stays on the console"
        )
    return None, notes


def local_ranks(text: str, local_world_size: int) -> FrozenSet[int]:
    """``--local-ranks-filter``'s local ranks, each one this node has."""
    parts = [p.strip() for p in text.split(",")]
    if not all(is_decimal(p) for p in parts):
        raise UsageError(
            f"--local-ranks-filter {text!r}: give local ranks like 0,1 (comma-separated integers)"
        )
    ranks = frozenset(int(p) for p in parts)
    outside = sorted(r for r in ranks if r >= local_world_size)
    if outside:
        raise UsageError(
            f"--local-ranks-filter {text}: local rank {outside[0]} is not on this node "
            f"(local ranks 0..{local_world_size - 1})"
        )
    return ranks


def shutdown_timeout(args: argparse.Namespace, env: Mapping[str, str]) -> float:
    """torchrun's SIGTERM -> SIGKILL wait: the flag, TORCH_ELASTIC_SHUTDOWN_TIMEOUT, or 30."""
    if args.shutdown_timeout is not None:
        if args.shutdown_timeout < 0:
            raise UsageError(f"--shutdown-timeout {args.shutdown_timeout} must be >= 0")
        return float(args.shutdown_timeout)
    text = env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "").strip()
    if not text:
        return float(DEFAULT_SHUTDOWN_TIMEOUT)
    if not is_decimal(text):
        raise UsageError(f"TORCH_ELASTIC_SHUTDOWN_TIMEOUT={text!r}: give whole seconds >= 0")
    return float(text)


__all__ = [
    "check_flags",
    "local_ranks",
    "output_options",
    "resolve_command",
    "shutdown_timeout",
]
