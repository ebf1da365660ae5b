"""Every launcher setting, once: four frozen groups, built by the CLI or a caller, passed down.

* :class:`WorldOptions` -- which world: the adapter and the flags that shape a World;
* :class:`OutputOptions` -- where workers' output goes: per-rank logs, prefixes, the filter;
* :class:`LaunchOptions` -- how workers are started and stopped: cores, NUMA, PID file,
  the SIGTERM -> SIGKILL wait, the stall timeout and stack dumps, whether a failure here
  ends the job on every node;
* :class:`ElasticOptions` -- elastic mode's bounds, restarts and rendezvous settings.

Each group's ``check`` holds every refusal of its values, with the flag's name in the
message, so a bad value is refused the same way (one line, nothing spawned) whether it came
from the command line or from :mod:`hpclaunch.api`. A :class:`~hpclaunch.model.plan.LaunchPlan`
carries the output and launch groups it was planned with; the spawner reads them there.
"""

from __future__ import annotations

from typing import AbstractSet, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple, Union

from hpclaunch.errors import UsageError

#: --numa_binding's choices.
NUMA_MODES = ("none", "node", "socket", "exclusive")
#: Restarts when ``--max_restarts`` is not given in elastic mode: LaunchConfig's default.
#: (torchrun's is 0, but a job that cannot restart gains little from the agent.)
DEFAULT_MAX_RESTARTS = 3
#: Largest --kill_timeout: a day. Beyond it a typo (ms for s) would hold GPUs for weeks.
MAX_KILL_TIMEOUT = 86400.0
#: CPUs Linux can number: no architecture builds for more (the largest ``CONFIG_NR_CPUS``,
#: x86_64's and powerpc's, is 8192), so a core id at or above it is a typo, refused before
#: anything is allocated for it.
MAX_CPUS = 8192
#: Most workers one node may start: one per CPU of the largest machine Linux can run on.
#: A count above it is a typo (``--nproc_per_node 1000000`` planned for seconds, in GBs).
MAX_LOCAL_WORKERS = MAX_CPUS
#: --stall_timeout's bounds: a second (the heartbeat file is read at most once a second),
#: and a week (longer than any batch limit: beyond it, a typo).
MIN_STALL_TIMEOUT, MAX_STALL_TIMEOUT = 1.0, 604800.0


class WorldOptions(NamedTuple):
    """The launcher flags that shape a World. ``None`` means "not given": the adapter decides."""

    node_rank: Optional[int] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    world_info: Optional[str] = None
    nproc_per_node: Optional[int] = None
    #: ``--adapter``: ``auto`` (detect), or a built-in's or installed plug-in's name.
    adapter: str = "auto"

    def check(self) -> None:
        """Refuse values no adapter could honour, naming the flag."""
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise UsageError(f"--nproc_per_node {self.nproc_per_node} must be at least 1")
        if self.nproc_per_node is not None:
            check_local_workers(self.nproc_per_node, "--nproc_per_node")
        if self.node_rank is not None and self.node_rank < 0:
            raise UsageError(f"--node_rank {self.node_rank} must be >= 0")
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            raise UsageError(f"--master_port {self.master_port} is out of range: use 1..65535")


class OutputOptions(NamedTuple):
    """Where each worker's stdout and stderr go."""

    #: ``--enable_each_rank_log DIR``: each rank's output to its own file in DIR.
    log_dir: Optional[str] = None
    #: The per-rank logs' ``<timestamp>`` (``%Y%m%d%H%M%S``); the planner fills in "now".
    log_timestamp: str = ""
    #: ``[rank<R>]: `` before each console line; None: when the world has more than one rank.
    prefix_output: Optional[bool] = None
    #: ``--no_prefix``: shown workers write to the console directly (no relay, no tail).
    raw_output: bool = False
    #: ``--ranks_filter``: only these global ranks' console output is shown (None: all).
    ranks_filter: Optional[FrozenSet[int]] = None
    #: ``--event_log PATH``: one JSON line per launch event; ``{node_rank}``, ``{host}``,
    #: ``{run_id}`` in PATH are filled in (see :mod:`hpclaunch.spawner.record`).
    event_log: Optional[str] = None
    #: ``--metrics_file PATH``: Prometheus text, rewritten atomically while the job runs.
    metrics_file: Optional[str] = None

    def check(self, world_size: int) -> None:
        """A filter naming a rank the world does not have is a typo, not a wish for silence."""
        for flag, path in (("--event_log", self.event_log), ("--metrics_file", self.metrics_file)):
            if path is not None:
                check_record_path(flag, path)
        if self.ranks_filter is None:
            return
        bad = [r for r in self.ranks_filter if isinstance(r, bool) or not isinstance(r, int)]
        if bad or not self.ranks_filter or min(self.ranks_filter) < 0:
            raise UsageError(
                f"--ranks_filter {format_ranks(self.ranks_filter)}: give global ranks like 0,3"
            )
        highest = max(self.ranks_filter)
        if highest >= world_size:
            raise UsageError(
                f"--ranks_filter {format_ranks(self.ranks_filter)}: rank {highest} is not in "
                f"this world of {world_size} rank(s) (0..{world_size - 1})"
            )

    def shows(self, rank: int) -> bool:
        return self.ranks_filter is None or rank in self.ranks_filter


class LaunchOptions(NamedTuple):
    """How this node's workers are started, bound and stopped."""

    #: Seconds between SIGTERM and SIGKILL when tearing workers down.
    kill_timeout: float = 15.0
    #: The PID file written for the launch's duration (``--save_pid``), or None.
    pid_file: Optional[str] = None
    #: ``--bind_cores_to_rank``: these cores shared out evenly among the workers.
    bind_cores: Optional[Tuple[int, ...]] = None
    #: ``--numa_binding``: CPUs and memory nearest each worker's GPU.
    numa_binding: str = "none"
    #: ``--stall_timeout``: seconds without progress from every rank that made some before
    #: the launcher dumps the stacks and stops the job (None or 0: never).
    stall_timeout: Optional[float] = None
    #: False (``--no_stack_dumps``): no dump handler in the workers, no tracer permission,
    #: no py-spy; SIGQUIT and a stall then report the processes' states only.
    stack_dumps: bool = True
    #: When a worker here fails, ask the scheduler that started the launchers to end the job
    #: on every node (Slurm: the step); ``--no_scheduler_end`` turns it off.
    scheduler_end: bool = True

    def check(self) -> None:
        timeout = self.kill_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 <= timeout <= MAX_KILL_TIMEOUT  # also refuses nan
        ):
            shown = f"{timeout:g}" if isinstance(timeout, (int, float)) else repr(timeout)
            raise UsageError(f"--kill_timeout {shown}: give seconds from 0 to 86400")
        if self.numa_binding not in NUMA_MODES:
            raise UsageError(
                f"--numa_binding {self.numa_binding!r}: use one of {', '.join(NUMA_MODES)}"
            )
        check_cpu_choice(self.numa_binding, self.bind_cores is not None, None)
        check_stall_timeout(self.stall_timeout)
        if not isinstance(self.stack_dumps, bool):
            raise UsageError(f"stack_dumps {self.stack_dumps!r}: give True or False")
        if not isinstance(self.scheduler_end, bool):
            raise UsageError(
                f"scheduler_end={self.scheduler_end!r}: give True or False "
                "(False is --no_scheduler_end)"
            )
        if self.bind_cores is not None:
            if len(set(self.bind_cores)) != len(self.bind_cores):
                raise UsageError("--bind_core_list lists a core twice: list each core once")
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 0
                   for c in self.bind_cores):
                raise UsageError("--bind_core_list: core ids are integers >= 0")
            check_core_id(max(self.bind_cores, default=0), "--bind_core_list")


class ElasticOptions(NamedTuple):
    """What elastic mode adds to a plan. ``-1`` node bounds mean the world's node count.

    ``rendezvous_conf`` is ``--rdzv_conf`` as given (``key=value,...``).
    """

    min_nodes: int = -1
    max_nodes: int = -1
    #: None: :data:`DEFAULT_MAX_RESTARTS`.
    max_restarts: Optional[int] = None
    rendezvous_conf: Optional[str] = None

    @property
    def restarts(self) -> int:
        """``max_restarts``, or elastic mode's default when it was not given."""
        return DEFAULT_MAX_RESTARTS if self.max_restarts is None else self.max_restarts


def check_cpu_choice(
    numa_binding: str, bind_cores_to_rank: bool, bind_core_list: Optional[str]
) -> None:
    """--numa_binding chooses CPUs by GPU; --bind_cores_to_rank/--bind_core_list share them
    evenly (DeepSpeed's meaning, unchanged). Both at once would be two answers: refuse."""
    if numa_binding != "none" and (bind_cores_to_rank or bind_core_list):
        raise UsageError(
            f"--numa_binding {numa_binding} and --bind_cores_to_rank/--bind_core_list both "
            "choose each worker's CPUs: use one (narrow the CPUs with taskset or srun "
            "--cpu-bind instead of --bind_core_list)"
        )


def check_local_workers(count: int, source: str) -> None:
    """Refuse a per-node worker count no machine has (see :data:`MAX_LOCAL_WORKERS`)."""
    if count > MAX_LOCAL_WORKERS:
        raise UsageError(
            f"{source} asks for {clip(str(count), 12)} workers on this node: at most "
            f"{MAX_LOCAL_WORKERS} (one per CPU of the largest machine Linux runs on)"
        )


def check_core_id(core: Union[int, str], flag: str) -> None:
    """Refuse a core id (or its decimal text) Linux cannot have (see :data:`MAX_CPUS`).

    Text is measured before it is converted: ``int()`` of thousands of digits is refused by
    Python itself, and a number that long is no core anyway.
    """
    text = str(core)
    if len(text) > len(str(MAX_CPUS)) or int(text) >= MAX_CPUS:
        raise UsageError(
            f"{flag} names core {clip(text, 12)}, but Linux numbers CPUs 0..{MAX_CPUS - 1} "
            "at most: list this machine's cores (see 'nproc' or lscpu)"
        )


def clip(text: str, most: int = 60) -> str:
    """``text`` for one error line: its start and how long it was, if it is long."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


def check_stall_timeout(seconds: object) -> None:
    """None or 0 is off; otherwise a finite number of seconds within the bounds."""
    if seconds is None or (seconds == 0 and not isinstance(seconds, bool)):
        return
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not MIN_STALL_TIMEOUT <= seconds <= MAX_STALL_TIMEOUT  # also refuses nan
    ):
        shown = f"{seconds:g}" if isinstance(seconds, (int, float)) else repr(seconds)
        raise UsageError(
            f"--stall_timeout {shown}: give seconds from 1 to 604800 (or 0 for no stall check)"
        )


#: What ``--event_log``/``--metrics_file`` paths may name, filled in per node.
RECORD_PATH_FIELDS = ("node_rank", "host", "run_id")


def check_record_path(flag: str, path: object) -> None:
    """A record path is a non-empty string whose ``{...}`` name only :data:`RECORD_PATH_FIELDS`
    (a format spec such as ``{node_rank:03d}`` is fine; attributes and indexes are not), so a
    typo is refused before anything starts rather than found in a file name afterwards."""
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise UsageError(f"{flag} {path!r}: give a file path")
    import string

    fields = ", ".join("{" + name + "}" for name in RECORD_PATH_FIELDS)
    try:
        parts = list(string.Formatter().parse(path))
    except ValueError as exc:
        raise UsageError(
            f"{flag} {path!r}: {exc} (write a literal brace as {{{{ or }}}}; fields: {fields})"
        ) from None
    for _, name, _, conversion in parts:
        if name is not None and (name not in RECORD_PATH_FIELDS or conversion):
            raise UsageError(f"{flag} {path!r}: unknown field {{{name}}}: use {fields}")
    try:
        path.format(node_rank=0, host="host", run_id="run")
    except ValueError as exc:
        raise UsageError(f"{flag} {path!r}: {exc} (fields: {fields})") from None


def format_ranks(ranks: AbstractSet[object]) -> str:
    """``{3, 0}`` -> ``"0,3"`` (unsortable members as they come), short enough for one line."""
    try:
        shown = sorted(ranks)  # type: ignore[type-var]
    except TypeError:
        shown = list(ranks)
    text = ",".join(map(str, shown[:8]))
    return text + (f",... ({len(shown)} ranks)" if len(shown) > 8 else "")


def format_ranges(numbers: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"`` (the kernel's cpulist format; duplicates
    shown once)."""
    ordered = sorted(set(numbers))
    parts: List[str] = []
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[start], ordered[end]
        parts.append(str(first) if first == last else f"{first}-{last}")
        start = end + 1
    return ",".join(parts)


__all__ = ["ElasticOptions", "LaunchOptions", "NUMA_MODES", "OutputOptions", "WorldOptions"]
