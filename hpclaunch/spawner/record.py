"""The job's record: the JSON event log (``--event_log``) and the metrics file (``--metrics_file``).

:class:`JobRecord` is the :class:`~hpclaunch.spawner.events.Events` recorder the spawner is
given when either flag is on (without them it gets ``NoEvents``: no file, no cost).

The event log is one JSON object per line, appended with one ``write`` per event on a
descriptor opened ``O_APPEND``: nothing is buffered across events, so a launcher killed by
SIGKILL leaves every line it wrote whole, and a line is never split by another writer's.
Every line starts with the same header (schema version, event name, wall time in UTC,
seconds since the launcher started, run id, node rank, host); docs/events.md lists each
event's fields. The file is never truncated: a second launch with the same path appends,
and readers tell launches apart by their ``launch`` lines.

A record that cannot be written any more (disk full, file system gone) is reported once and
given up; the job goes on: its record is never a reason to stop it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

from hpclaunch.errors import SpawnError, UsageError
from hpclaunch.model.plan import LaunchPlan
from hpclaunch.reporter import Reporter
from hpclaunch.spawner.events import Progress
from hpclaunch.spawner.logs import write_all
from hpclaunch.spawner.metrics import JobMetrics, MetricsClock, MetricsFile
from hpclaunch.spawner.usage import LauncherClock, launcher_clock, signal_name

if TYPE_CHECKING:
    from hpclaunch.spawner.output.console import Console
    from hpclaunch.spawner.report import Outcome

#: Bumped for any incompatible change of a line's meaning (a field removed, renamed or
#: retyped); adding events or fields is compatible and keeps it.
SCHEMA_VERSION = 1

#: At most this many hosts are named in the ``launch`` event's world (it stays brief).
LISTED_HOSTS = 64

_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def fill_path(template: str, plan: LaunchPlan) -> str:
    """``template`` with ``{node_rank}``, ``{host}``, ``{run_id}`` of this node (checked by
    :func:`hpclaunch.options.check_record_path`); a ``/`` in a value cannot add directories."""
    world = plan.world

    def safe(value: str) -> str:
        return value.replace(os.sep, "_").replace("\0", "_") or "_"

    return template.format(node_rank=world.node_rank, host=safe(plan.host),
                           run_id=safe(world.run_id))


#: The header's keys: an event's own field of the same name is left out.
HEADER_KEYS = frozenset(("schema", "event", "time", "elapsed", "run_id", "node_rank", "host"))


class EventLog:
    """Appends one whole line per event to an open ``O_APPEND`` descriptor.

    A line is built as one string around a header encoded once, with one reused JSON
    encoder for the event's own fields: workers are forked between events, and every
    object a line allocates or touches then costs a copy-on-write page fault in the
    launcher, so the cheapest line is the one that touches the least (benchmarks/).
    """

    def __init__(self, path: str, plan: LaunchPlan, clock: LauncherClock) -> None:
        self.path = path
        self.fd = _open_log(path)
        self.origin = clock.started_monotonic
        self.encode = json.JSONEncoder(separators=(",", ":"), default=str,
                                       check_circular=False).encode
        header = {"run_id": plan.world.run_id, "node_rank": plan.world.node_rank,
                  "host": plan.host}
        self.header = self.encode(header)[1:-1]
        self.second = -1
        self.stamp = ""

    def write(self, name: str, fields: Mapping[str, Any]) -> None:
        """Raises OSError if the line could not be written whole."""
        wall, now = time.time(), time.monotonic()
        if not HEADER_KEYS.isdisjoint(fields):
            fields = {k: v for k, v in fields.items() if k not in HEADER_KEYS}
        own = self.encode(fields)[1:-1]
        line = (f'{{"schema":{SCHEMA_VERSION},"event":{self.encode(name)},'
                f'"time":"{self.utc(wall)}","elapsed":{now - self.origin:.6f},'
                f'{self.header}{"," if own else ""}{own}}}\n')
        write_all(self.fd, line.encode())  # one write, unless the file system takes part

    def utc(self, wall: float) -> str:
        """``2026-12-03T10:11:12.123456Z``: ISO 8601, UTC, microseconds (truncated, so a
        line never shows a time later than its own); strftime once a second."""
        second = int(wall)
        if second != self.second:
            self.second = second
            self.stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.stamp}.{min(int((wall - second) * 1e6), 999999):06d}Z"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_log(path: str) -> int:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, _LOG_FLAGS, 0o644)
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise SpawnError(f"--event_log {path}: cannot open it ({why}): give a writable file") \
            from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpawnError(f"--event_log {path}: not a regular file: give a file path")
    os.set_blocking(fd, True)  # O_NONBLOCK only so that opening a FIFO cannot hang
    return fd


class JobRecord:
    """The event log and the metrics file behind the spawner's ``events.emit``."""

    def __init__(
        self,
        log: Optional[EventLog],
        metrics: Optional[JobMetrics],
        metrics_file: Optional[MetricsFile],
        reporter: Reporter,
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.metrics_file = metrics_file
        self.metrics_clock = MetricsClock()
        self.reporter = reporter
        self.progress: Callable[[], Progress] = dict

    # ------------------------------------------------------------------ Events

    def emit(self, name: str, **fields: Any) -> None:
        if self.metrics is not None:
            try:
                self.metrics.observe(name, fields)
            except (KeyError, TypeError, ValueError):
                pass  # a malformed event still goes to the log, as it is
        if self.log is not None:
            try:
                self.log.write(name, fields)
            except (OSError, TypeError, ValueError) as exc:
                self.reporter.warning(
                    f"cannot write the event log {self.log.path} ({_why(exc)}): "
                    "no more events are recorded"
                )
                self.log.close()
                self.log = None

    def next_timeout(self) -> Optional[float]:
        return self.metrics_clock.timeout() if self.metrics_file is not None else None

    def on_wake(self, progress: Callable[[], Progress]) -> None:
        self.progress = progress
        if self.metrics_file is not None and self.metrics_clock.take():
            self.write_metrics()

    def close(self) -> None:
        self.write_metrics()
        if self.log is not None:
            self.log.close()
            self.log = None

    # ------------------------------------------------------------------ metrics

    def write_metrics(self) -> None:
        if self.metrics is None or self.metrics_file is None:
            return
        try:
            self.metrics_file.write(self.metrics.render(self.progress()))
        except OSError as exc:
            self.reporter.warning(
                f"cannot write the metrics file {self.metrics_file.path} ({_why(exc)}): "
                "it is no longer updated"
            )
            self.metrics_file = None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def open_record(plan: LaunchPlan, reporter: Reporter) -> Optional[JobRecord]:
    """The recorder ``--event_log``/``--metrics_file`` ask for (None: neither is on).

    Both files are opened (and the metrics written once) here, before anything starts, so
    a path that cannot be written is exit 2 with nothing spawned.
    """
    output = plan.output
    if output.event_log is None and output.metrics_file is None:
        return None
    clock = launcher_clock()
    log = EventLog(fill_path(output.event_log, plan), plan, clock) if output.event_log else None
    metrics = metrics_file = None
    if output.metrics_file is not None:
        metrics = JobMetrics(plan.world.run_id, plan.world.node_rank, clock.started_wall)
        metrics_file = MetricsFile(fill_path(output.metrics_file, plan))
        try:
            os.makedirs(os.path.dirname(metrics_file.path), exist_ok=True)
            metrics_file.write(metrics.render({}))
        except OSError as exc:
            if log is not None:
                log.close()
            raise SpawnError(
                f"--metrics_file {metrics_file.path}: cannot write it ({_why(exc)}): give a "
                "file in a writable directory"
            ) from None
    return JobRecord(log, metrics, metrics_file, reporter)


def launch_fields(plan: LaunchPlan, argv: Any) -> Dict[str, Any]:
    """The ``launch`` event: who started what, in which world, with which ranks here."""
    from hpclaunch import __version__

    world = plan.world
    brief: Dict[str, Any] = {
        "nodes": world.num_nodes,
        "world_size": world.world_size,
        "master_addr": world.master_addr,
        "master_port": world.master_port,
    }
    if world.num_nodes <= LISTED_HOSTS:
        brief["hosts"] = [host.name for host in world.hosts]
    fields: Dict[str, Any] = {
        "version": __version__,
        "argv": list(argv),
        "adapter": plan.adapter,
        "world": brief,
        "ranks": [spec.rank for spec in plan.workers],
        "pid": os.getpid(),
        "machine": os.uname().nodename,
        "elastic": plan.elastic is not None,
        "kill_timeout": plan.launch.kill_timeout,
    }
    return fields




def recorded_run(
    plan: LaunchPlan,
    base_env: Mapping[str, str],
    reporter: Reporter,
    console: Console,
    run: Callable[..., Outcome],
) -> Outcome:
    """``run`` (:func:`hpclaunch.spawner.run`) between the record's ``launch`` and ``end``.

    A launch refused before anything started (exit 2) still ends its record, with the error.
    """
    record = open_record(plan, reporter)
    if record is None:
        return run(plan, base_env, reporter, console)
    clock = launcher_clock()
    try:
        record.emit("launch", **launch_fields(plan, getattr(sys, "orig_argv", sys.argv)))
        try:
            outcome = run(plan, base_env, reporter, console, record)
        except UsageError as exc:
            record.emit("end", exit_status=2, seconds=round(clock.elapsed(), 6),
                        error=" ".join(str(exc).split()))
            raise
        record.emit("end", **end_fields(outcome, clock))
        return outcome
    finally:
        record.close()


def end_fields(outcome: Outcome, clock: LauncherClock) -> Dict[str, Any]:
    """The ``end`` event: the exit status, how long, and why when it is not 0."""
    fields: Dict[str, Any] = {
        "exit_status": outcome.exit_code,
        "seconds": round(clock.elapsed(), 6),
    }
    failure = outcome.failure
    if failure is not None:
        fields["failed_rank"] = failure.rank
        fields["cause"] = failure.describe()
    elif outcome.fatal_signal is not None:
        fields["signal"] = signal_name(outcome.fatal_signal)
        fields["cause"] = f"the launcher got {signal_name(outcome.fatal_signal)}"
    elif outcome.error:
        fields["cause"] = outcome.error
    if outcome.leftovers_killed:
        fields["leftovers"] = outcome.leftovers_killed
    return fields


__all__ = ["SCHEMA_VERSION", "EventLog", "JobRecord", "end_fields", "fill_path",
           "launch_fields", "open_record", "recorded_run"]
