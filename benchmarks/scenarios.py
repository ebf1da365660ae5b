"""One sample of each kind of measurement. Every function starts, times and cleans up alone.

Event latencies are measured from the event: the benchmark records CLOCK_MONOTONIC right
before it sends a signal, or the failing worker records it right before it dies, and the
launcher's exit is the moment its pidfd turns readable. Survivors are the announced PIDs
still alive ``grace`` seconds after the launcher exited.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from benchmarks.procs import BenchError, Fifo, Launch, kill_pids, pids_in, vm_hwm_kib, wait_gone

GNU_TIME = "/usr/bin/time"
#: Announced processes still alive this long after the launcher exited are survivors.
SURVIVOR_GRACE_S = 2.0


@dataclass
class Sample:
    """What one run measured. ``value`` is the headline figure; ``extra`` holds the rest."""

    value: Optional[float] = None
    rc: Optional[int] = None
    survivors: Optional[int] = None
    extra: Dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None


def _rss_mib(path: Path) -> float:
    """GNU time's ``%M`` (KiB). It comes from wait4 of a small C parent, so it carries no
    Python parent's pre-exec high-water mark; it does include reaped children's peaks, which
    is why RSS cases use /bin/true workers (1-2 MiB)."""
    lines = [line for line in path.read_text().split() if line.strip().isdigit()]
    if not lines:
        raise BenchError(f"no %M figure from {GNU_TIME}: {path.read_text()!r}")
    return int(lines[-1]) / 1024


def wall(
    argv: Sequence[str],
    env: Dict[str, str],
    workdir: Path,
    timeout: float,
    *,
    rss: bool = False,
    check: Optional[Callable[[str], Optional[str]]] = None,
) -> Sample:
    """Wall time of a whole run; with ``rss`` also its peak RSS via GNU time; ``check``
    validates stdout (returns an error text or None)."""
    rss_file = workdir / "rss.txt"
    out_file = workdir / "stdout.txt"
    cmd = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv] if rss else list(argv)
    launch = Launch.start(cmd, env, workdir / "launcher.log", stdout=out_file)
    try:
        end = launch.wait(timeout)
    finally:
        launch.close()
    sample = Sample(value=(end - launch.started_ns) / 1e9, rc=launch.returncode)
    if rss:
        sample.extra["rss_mib"] = _rss_mib(rss_file)
    if launch.returncode != 0:
        sample.error = f"exit {launch.returncode}: {launch.tail()}"
    elif check is not None:
        sample.error = check(out_file.read_text(errors="replace"))
    return sample


def start_latency(
    argv: Sequence[str], env: Dict[str, str], workdir: Path, timeout: float
) -> Sample:
    """Time from exec of the launcher to its first worker running ``date +%s%N``.

    ``date`` prints CLOCK_REALTIME, so the start is taken on that clock too.
    """
    out_file = workdir / "stdout.txt"
    before = time.time_ns()
    launch = Launch.start(argv, env, workdir / "launcher.log", stdout=out_file)
    try:
        launch.wait(timeout)
    finally:
        launch.close()
    stamps = [int(w) for w in out_file.read_text().split() if w.isdigit() and len(w) >= 18]
    if launch.returncode != 0 or not stamps:
        return Sample(rc=launch.returncode, error=f"no timestamp (exit {launch.returncode}): "
                      f"{launch.tail()}")
    return Sample(value=(min(stamps) - before) / 1e9, rc=launch.returncode)


@dataclass(frozen=True)
class Event:
    """What to do once every worker has announced itself."""

    kind: str  # "signal" (send ``sig`` to the launcher) or "fail" (release the failing rank)
    sig: int = signal.SIGTERM
    fail_rank: int = 1


def event_latency(
    argv: Sequence[str],
    env: Dict[str, str],
    workdir: Path,
    fifo: Fifo,
    announcements: int,
    event: Event,
    timeout: float,
) -> Sample:
    """Start, wait for ``announcements`` FIFO lines, cause ``event``, time the launcher's exit.

    ``value``: seconds from the event to the launcher's exit. ``survivors``: announced PIDs
    alive ``SURVIVOR_GRACE_S`` after it. ``extra['hwm_mib']``: the launcher's own VmHWM with
    all workers running (children excluded, unlike wait4's figure).
    """
    launch = Launch.start(argv, env, workdir / "launcher.log")
    pids: List[int] = []
    try:
        lines = fifo.expect(announcements, timeout=timeout, launcher=launch)
        pids = pids_in(lines)
        sample = Sample()
        hwm = vm_hwm_kib(launch.pid)
        if hwm is not None:
            sample.extra["hwm_mib"] = hwm / 1024
        if event.kind == "signal":
            event_ns = time.monotonic_ns()
            os.kill(launch.pid, event.sig)
            end = launch.wait(timeout)
        else:
            failing = [int(ln.split()[2]) for ln in lines
                       if ln.startswith(f"worker {event.fail_rank} ")]
            if not failing:
                raise BenchError(f"rank {event.fail_rank} never announced itself: {lines}")
            os.kill(failing[0], signal.SIGUSR1)
            end = launch.wait(timeout)
            dead = fifo.expect(1, timeout=5.0)[0].split()
            if dead[0] != "dead":
                raise BenchError(f"expected the death timestamp, got {dead}")
            event_ns = int(dead[2])
        sample.value = (end - event_ns) / 1e9
        sample.rc = launch.returncode
        sample.survivors = len(wait_gone(pids, SURVIVOR_GRACE_S))
        return sample
    finally:
        kill_pids(pids)  # only our announced workers, and only if still there
        launch.close()


def kill9_survivors(
    argv: Sequence[str],
    env: Dict[str, str],
    workdir: Path,
    fifo: Fifo,
    announcements: int,
    timeout: float,
) -> Sample:
    """SIGKILL the launcher once its workers announced; ``value`` = announced PIDs alive
    ``SURVIVOR_GRACE_S`` later; ``extra['gone_s']`` = how long until none was left."""
    launch = Launch.start(argv, env, workdir / "launcher.log")
    pids: List[int] = []
    try:
        pids = pids_in(fifo.expect(announcements, timeout=timeout, launcher=launch))
        killed_ns = time.monotonic_ns()
        os.kill(launch.pid, signal.SIGKILL)
        launch.wait(timeout)
        left = wait_gone(pids, SURVIVOR_GRACE_S)
        sample = Sample(value=float(len(left)), survivors=len(left), rc=launch.returncode)
        if not left:
            sample.extra["gone_s"] = (time.monotonic_ns() - killed_ns) / 1e9
        return sample
    finally:
        kill_pids(pids)
        launch.close()
