"""This node's job as Prometheus metrics, in the text format node_exporter's textfile collector
reads (``--collector.textfile.directory``; it takes files named ``*.prom``).

The numbers are kept from the spawner's events (:mod:`hpclaunch.spawner.events`), so they
cost nothing between events; the file is rendered and replaced only when due, at most every
:data:`REWRITE_SECONDS` (the event loop wakes for it: no thread, no timer of its own), and
once at the end. Each rewrite goes to a temporary file in the same directory that is then
renamed over the old one, so a scrape never sees half a file.

Every series carries ``run_id`` and ``node_rank``. The names and their meaning are listed in
docs/events.md and never change meaning; new ones may be added.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from hpclaunch.spawner.events import Progress
from hpclaunch.spawner.logs import CREATE, write_all

#: Seconds between rewrites while the job runs (a scrape interval is 15-60 s).
REWRITE_SECONDS = 5.0

def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exit_label(code: Optional[int], sig: Optional[str]) -> str:
    """``code`` label of an exit: the exit code, or the signal's name (``SIGKILL``), or
    ``unknown`` (elastic mode: torch's agent reaped the worker before it could be read)."""
    if sig:
        return sig
    return str(code) if code is not None else "unknown"


class JobMetrics:
    """The metrics' state, fed by events (``observe``) and rendered on demand (``render``)."""

    def __init__(self, run_id: str, node_rank: int, started_wall: float) -> None:
        self.labels = f'run_id="{_escape(run_id)}",node_rank="{node_rank}"'
        self.started_wall = started_wall
        self.planned = 0
        #: pid -> (rank, time.monotonic() of its spawn), for every worker still running.
        self.running: Dict[int, Tuple[int, float]] = {}
        self.exits: Dict[str, int] = {}
        self.restarts = 0
        self.oom_kills = 0
        self.stalls = 0
        self.dropped_bytes = 0
        self.exit_status: Optional[int] = None

    def observe(self, name: str, fields: Mapping[str, Any]) -> None:
        if name == "worker_spawned":
            self.running[int(fields["pid"])] = (int(fields["rank"]), time.monotonic())
        elif name == "worker_exit":
            self.running.pop(int(fields["pid"]), None)
            label = exit_label(fields.get("exit_code"), fields.get("signal"))
            self.exits[label] = self.exits.get(label, 0) + 1
            self.oom_kills += bool(fields.get("oom_killed"))
        elif name == "launch":
            self.planned = len(fields.get("ranks", ()))
        elif name == "restart":
            self.restarts += 1
        elif name == "stall":
            self.stalls += 1
        elif name == "output_dropped":
            self.dropped_bytes += int(fields.get("bytes", 0) or 0)
        elif name == "end":
            self.exit_status = int(fields["exit_status"])

    def render(self, progress: Progress) -> str:
        now = time.monotonic()
        labels = self.labels
        out: List[str] = []

        def family(name: str, kind: str, text: str, samples: List[Tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            sample_name = f"{name}_total" if kind == "counter" else name
            for extra, value in samples:
                out.append(f"{sample_name}{{{labels}{extra}}} {_number(value)}")

        family("hpclaunch_start_time_seconds", "gauge",
               "Unix time this node's launcher started.", [("", self.started_wall)])
        family("hpclaunch_workers_planned", "gauge",
               "Workers this node starts.", [("", self.planned)])
        family("hpclaunch_workers_running", "gauge",
               "Workers running now.", [("", len(self.running))])
        family("hpclaunch_worker_exits", "counter",
               "Worker exits by exit code, or by the signal's name when a signal ended it.",
               [(f',code="{_escape(code)}"', count) for code, count in sorted(self.exits.items())])
        last: Dict[int, float] = {}
        for rank, spawned in self.running.values():
            stamp = max(progress.get(rank, spawned), spawned)
            last[rank] = min(last.get(rank, now - stamp), now - stamp)
        family("hpclaunch_worker_last_progress_seconds", "gauge",
               "Seconds since the running rank's last output or heartbeat (or its start).",
               [(f',rank="{rank}"', round(age, 3)) for rank, age in sorted(last.items())])
        family("hpclaunch_restarts", "counter",
               "Restarts of the worker group (elastic mode).", [("", self.restarts)])
        family("hpclaunch_worker_oom_kills", "counter",
               "Workers the kernel's OOM killer ended.", [("", self.oom_kills)])
        family("hpclaunch_stalls", "counter", "Stalls detected.", [("", self.stalls)])
        family("hpclaunch_output_dropped_bytes", "counter",
               "Worker output dropped, in bytes.", [("", self.dropped_bytes)])
        if self.exit_status is not None:
            family("hpclaunch_exit_status", "gauge",
                   "The launcher's exit status (present once the job has ended).",
                   [("", self.exit_status)])
        return "\n".join(out) + "\n"


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class MetricsFile:
    """Where the metrics go: ``path``, replaced whole by a rename each time."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        folder, name = os.path.split(self.path)
        # Hidden and not *.prom: node_exporter never reads a half-written temporary file.
        self.temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")

    def write(self, text: str) -> None:
        """Raises OSError; the caller decides what a failure means."""
        data = text.encode()
        try:
            os.unlink(self.temporary)  # a stale one, or a planted link: never written through
        except FileNotFoundError:
            pass
        fd = os.open(self.temporary, CREATE, 0o644)
        try:
            write_all(fd, data)
            os.fchmod(fd, 0o644)  # readable by node_exporter whatever the umask
        except BaseException:
            os.close(fd)
            os.unlink(self.temporary)
            raise
        os.close(fd)
        os.rename(self.temporary, self.path)


class MetricsClock:
    """When the next rewrite is due: at once for the first, then every REWRITE_SECONDS."""

    def __init__(self, interval: float = REWRITE_SECONDS) -> None:
        self.interval = interval
        self.due = time.monotonic()

    def timeout(self) -> float:
        return max(0.0, self.due - time.monotonic())

    def take(self) -> bool:
        """True (and the next one scheduled) if a rewrite is due now."""
        now = time.monotonic()
        if now < self.due:
            return False
        self.due = now + self.interval
        return True


__all__ = ["JobMetrics", "MetricsClock", "MetricsFile", "REWRITE_SECONDS", "exit_label"]
