"""torchrun 2.13's command line, flag for flag, read the way torchrun reads it.

The flags, both spellings, defaults, types and choices are torch 2.13's
``torch/distributed/run.py``; so is its ``PET_*`` rule (``torch/distributed/
argparse_util.py``): a flag not given takes ``PET_<DEST>`` (``dest`` = the first long
spelling, dashes as underscores: ``PET_NPROC_PER_NODE``, ``PET_MODULE``), a switch is on
when ``PET_<DEST>`` is a non-zero integer, and ``--logs-specs``/``--numa-binding`` have no
``PET_*``. The parser is argparse with torchrun's layout (``training_script`` then everything
after it for the script), so abbreviations and ordering behave as torchrun's do. Bad input
raises :class:`~hpclaunch.errors.UsageError` (exit 2), never argparse's exit.

hpclaunch adds one flag: ``--dry-run`` (print the plan, start nothing).
"""

from __future__ import annotations

import argparse
from typing import Any, List, Mapping, NoReturn, Optional, Sequence

from hpclaunch.errors import UsageError

DEFAULT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
START_METHODS = ("spawn", "fork", "forkserver")
#: torch.numa.binding.AffinityMode's values in 2.13.
NUMA_MODES = ("node", "socket", "exclusive", "core-complex")

PROG = "hpclaunch-torchrun"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{PROG} --help')")


def comma_separated_list(value: str) -> List[str]:
    """torchrun's filter lists: ``a,b`` -> [a, b]; ``,,`` is a literal comma."""
    placeholder = "\0"
    return [item.replace(placeholder, ",") for item in value.replace(",,", placeholder).split(",")]


def _env_name(dest: str) -> str:
    return f"PET_{dest.upper()}"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """torchrun's parser, its ``PET_*`` defaults taken from ``env`` (not ``os.environ``)."""

    class EnvValue(argparse.Action):
        """torchrun's ``env`` action: ``PET_<DEST>`` replaces the default when set."""

        def __init__(self, dest: str, default: Any = None, required: bool = False,
                     **kwargs: Any) -> None:
            default = env.get(_env_name(dest), default)
            if default:
                required = False
            super().__init__(dest=dest, default=default, required=required, **kwargs)

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: Optional[str] = None) -> None:
            setattr(namespace, self.dest, values)

    class EnvSwitch(argparse.Action):
        """torchrun's ``check_env`` action: on when given, or when ``PET_<DEST>`` is a
        non-zero integer."""

        def __init__(self, dest: str, default: bool = False, **kwargs: Any) -> None:
            name = _env_name(dest)
            text = env.get(name, "1" if default else "0")
            try:
                value = bool(int(text))
            except ValueError:
                raise UsageError(
                    f"{name}={text!r}: torchrun reads it as an integer (1 on, 0 off)"
                ) from None
            super().__init__(dest=dest, const=True, default=value, nargs=0, **kwargs)

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: Optional[str] = None) -> None:
            setattr(namespace, self.dest, self.const)

    parser = _Parser(
        prog=PROG,
        description="torchrun's command line, run by hpclaunch (see hpclaunch's docs/cli.md, "
        "'hpclaunch-torchrun').",
    )
    add = parser.add_argument
    add("--nnodes", action=EnvValue, type=str, default="1:1",
        help="number of nodes, or MIN:MAX")
    add("--nproc-per-node", "--nproc_per_node", action=EnvValue, type=str, default="1",
        help="workers per node: a number, auto, cpu, gpu or xpu")
    add("--rdzv-backend", "--rdzv_backend", action=EnvValue, type=str, default="static",
        help="static or c10d")
    add("--rdzv-endpoint", "--rdzv_endpoint", action=EnvValue, type=str, default="",
        help="HOST[:PORT] of the rendezvous")
    add("--rdzv-id", "--rdzv_id", action=EnvValue, type=str, default="none",
        help="the run id (TORCHELASTIC_RUN_ID)")
    add("--rdzv-conf", "--rdzv_conf", action=EnvValue, type=str, default="",
        help="c10d rendezvous settings key=value,...")
    add("--standalone", action=EnvSwitch, help="one node, a rendezvous on a free port")
    add("--max-restarts", "--max_restarts", action=EnvValue, type=int, default=0,
        help="restarts of the worker group (elastic mode)")
    add("--monitor-interval", "--monitor_interval", action=EnvValue, type=float, default=0.1,
        help="accepted; hpclaunch does not poll")
    add("--start-method", "--start_method", action=EnvValue, type=str, default="spawn",
        choices=list(START_METHODS), help="accepted; workers are programs")
    add("--event-log-handler", "--event_log_handler", action=EnvValue, type=str,
        default="null", help="accepted; torch's elastic events are not emitted")
    add("--role", action=EnvValue, type=str, default="default", help="ROLE_NAME")
    add("-m", "--module", action=EnvSwitch, help="run 'python -m training_script'")
    add("--no-python", "--no_python", action=EnvSwitch, help="exec training_script")
    add("--run-path", "--run_path", action=EnvSwitch,
        help="runs the script as 'python -u SCRIPT' (same sys.argv and __main__)")
    add("--log-dir", "--log_dir", action=EnvValue, type=str, default=None,
        help="with -r 3: each rank's output to DIR/<timestamp>_rank<R>.log")
    add("-r", "--redirects", action=EnvValue, type=str, default="0",
        help="0, or 3 (with --log-dir)")
    add("-t", "--tee", action=EnvValue, type=str, default="0",
        help="accepted: the console shows the output; no copy is written")
    add("--local-ranks-filter", "--local_ranks_filter", action=EnvValue, type=str, default="",
        help="show only these local ranks' console output")
    add("--duplicate-stdout-filters", "--duplicate_stdout_filters", action=EnvValue,
        type=comma_separated_list, default=[], help="refused when given")
    add("--duplicate-stderr-filters", "--duplicate_stderr_filters", action=EnvValue,
        type=comma_separated_list, default=[], help="refused when given")
    add("--node-rank", "--node_rank", type=int, action=EnvValue, default=0,
        help="this node's rank (static form)")
    add("--master-addr", "--master_addr", default="127.0.0.1", type=str, action=EnvValue,
        help="address of node 0 (static form)")
    add("--master-port", "--master_port", default=None, type=int, action=EnvValue,
        help="port on node 0 (static form; default 29500)")
    add("--local-addr", "--local_addr", default=None, type=str, action=EnvValue,
        help="this node's address in a c10d rendezvous")
    add("--logs-specs", "--logs_specs", default=None, type=str, help="refused when given")
    add("--numa-binding", "--numa_binding", type=str, choices=list(NUMA_MODES), default=None,
        help="node, socket or exclusive (hpclaunch's --numa_binding)")
    add("--signals-to-handle", "--signals_to_handle", action=EnvValue, type=str,
        default=DEFAULT_SIGNALS, help="accepted; hpclaunch's signal handling is fixed")
    add("--shutdown-timeout", "--shutdown_timeout", action=EnvValue, type=int, default=None,
        help="seconds between SIGTERM and SIGKILL (default TORCH_ELASTIC_SHUTDOWN_TIMEOUT "
        "or 30)")
    add("--virtual-local-rank", "--virtual_local_rank", action=EnvSwitch,
        help="LOCAL_RANK=0, each worker sees its own GPU only (static form)")
    add("--dry-run", "--dry_run", action="store_true",
        help="hpclaunch's own: print the plan as JSON, start nothing")
    add("training_script", type=str, help="the program every worker runs")
    add("training_script_args", nargs=argparse.REMAINDER)
    return parser


def parse(argv: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    """torchrun's ``parse_args`` over ``argv``, with ``PET_*`` from ``env``."""
    return build_parser(env).parse_args(list(argv))


__all__ = ["DEFAULT_SIGNALS", "NUMA_MODES", "PROG", "build_parser", "comma_separated_list",
           "parse"]
