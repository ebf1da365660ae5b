"""What this node's workers used, and the one line that says so when the job ends.

The numbers come free with each worker's reaping: ``os.wait4`` returns the child's rusage
with its exit status (user + system CPU, its own waited-for descendants included, and the
peak resident set size). Nothing is sampled while the job runs.

What ``peak RSS`` means: Linux keeps a process's high-water mark across ``exec``
(``ru_maxrss`` is the larger of the exec'd program's peak and the peak of the image it
replaced). A worker is forked from the launcher and exec'd at once, so its peak is at least
what the forked copy of the launcher had mapped -- about the launcher's own RSS (~10-15 MiB;
measured in benchmarks/). For a training process (GiBs) that floor is noise; for a tiny
worker the number is the launcher's footprint, not the worker's.

Seconds since the launcher started are measured from the process's own start time
(``/proc/self/stat``), so the interpreter's start-up counts, and every caller that asks
gets the same origin without passing it around.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from hpclaunch.options import format_ranges
from hpclaunch.spawner.tree import stat_fields

if TYPE_CHECKING:
    from resource import struct_rusage


class LauncherClock(NamedTuple):
    """The launcher process's start on the monotonic and the wall clock."""

    started_monotonic: float
    started_wall: float

    def elapsed(self, now: Optional[float] = None) -> float:
        """Seconds since the launcher started (``now``: a ``time.monotonic()`` reading)."""
        return (time.monotonic() if now is None else now) - self.started_monotonic


def launcher_clock() -> LauncherClock:
    """When this process started: its start time in clock ticks since boot, against
    ``CLOCK_BOOTTIME``; the time of the call where /proc cannot tell (age 0)."""
    age = 0.0
    try:
        fields = stat_fields("/proc/self/stat") or []
        ticks = int(fields[19])  # field 22, starttime; fields[0] is field 3, the state
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    age = min(max(age, 0.0), 86400.0 * 365)
    return LauncherClock(time.monotonic() - age, time.time() - age)


def cpu_and_peak(usage: Optional[struct_rusage]) -> Tuple[Optional[float], Optional[int]]:
    """(user + system CPU seconds, peak RSS in bytes) from a ``wait4`` rusage."""
    if usage is None:
        return None, None
    return round(usage.ru_utime + usage.ru_stime, 6), int(usage.ru_maxrss) * 1024


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_text(code: Optional[int], sig: Optional[int], oom_killed: bool = False) -> str:
    """``exited 0``, ``killed by SIGTERM``, ``killed by the OOM killer``, ``status unknown``."""
    if oom_killed:
        return "killed by the OOM killer"
    if sig is not None:
        return f"killed by {signal_name(sig)}"
    if code is not None:
        return f"exited {code}"
    return "status unknown"


class WorkerUsage(NamedTuple):
    """One worker's end: how, and what it used (None: not known, e.g. reaped by torch)."""

    rank: int
    exit_code: Optional[int]
    signal: Optional[int]
    cpu_seconds: Optional[float]
    peak_rss: Optional[int]
    oom_killed: bool = False

    @property
    def status(self) -> str:
        return exit_text(self.exit_code, self.signal, self.oom_killed)


def format_bytes(count: float) -> str:
    """``1.5 GiB``: binary units, one decimal from MiB up."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count / 1024:.0f} KiB"


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{minutes}m{rest:02d}s"


def rank_ranges(ranks: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2,5,7-8``."""
    return format_ranges(ranks)


class NodeUsage:
    """Every worker start and end seen on this node (elastic mode starts a rank again)."""

    def __init__(self, planned: Sequence[int] = ()) -> None:
        self.planned = tuple(planned)
        self.started: Set[int] = set()
        self.ends: List[WorkerUsage] = []

    def start(self, rank: int) -> None:
        self.started.add(rank)

    def add(self, end: WorkerUsage) -> None:
        self.ends.append(end)

    def summary(self, node_rank: int, host: str, wall_seconds: float) -> str:
        """One line: each status with its ranks, wall time, total CPU, the peak and its rank."""
        last: Dict[int, WorkerUsage] = {end.rank: end for end in self.ends}
        groups: Dict[str, List[int]] = {}
        for rank, end in last.items():
            groups.setdefault(end.status, []).append(rank)
        for rank in sorted(set(self.planned) | self.started):
            if rank not in last:
                status = "still running" if rank in self.started else "not started"
                groups.setdefault(status, []).append(rank)
        statuses = "; ".join(
            f"{'rank' if len(ranks) == 1 else 'ranks'} {rank_ranges(ranks)} {status}"
            for status, ranks in sorted(groups.items(), key=lambda item: min(item[1]))
        )
        parts = [f"wall {format_seconds(wall_seconds)}"]
        cpus = [end.cpu_seconds for end in self.ends if end.cpu_seconds is not None]
        if cpus:
            parts.append(f"CPU {format_seconds(sum(cpus))}")
        peaks = [end for end in self.ends if end.peak_rss is not None]
        if peaks:
            top = max(peaks, key=lambda end: end.peak_rss or 0)
            parts.append(f"peak RSS {format_bytes(top.peak_rss or 0)} (rank {top.rank})")
        earlier = len(self.ends) - len(last)
        if earlier > 0:
            parts.append(f"{earlier} earlier worker exit(s) before restarts")
        return f"node {node_rank} ({host}): {statuses or 'no workers ran'}; {', '.join(parts)}"


__all__ = [
    "LauncherClock",
    "NodeUsage",
    "WorkerUsage",
    "cpu_and_peak",
    "exit_text",
    "format_bytes",
    "format_seconds",
    "launcher_clock",
    "rank_ranges",
]
