"""One sample of each kind of measurement. Every function starts, times and cleans up alone.

Event latencies are measured from the event: the benchmark records CLOCK_MONOTONIC right
before it sends a signal, or the failing worker records it right before it dies, and the
launcher's exit is the moment its pidfd turns readable. Survivors are the announced PIDs
still alive ``grace`` seconds after the launcher exited.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
    cpu_before = _children_cpu()
    launch = Launch.start(cmd, env, workdir / "launcher.log", stdout=out_file)
    try:
        end = launch.wait(timeout)
    finally:
        launch.close()
    sample = Sample(value=(end - launch.started_ns) / 1e9, rc=launch.returncode)
    # Reaped children's CPU: the launcher and every worker it reaped (one case at a time).
    sample.extra["cpu_s"] = _children_cpu() - cpu_before
    if rss:
        sample.extra["rss_mib"] = _rss_mib(rss_file)
    if launch.returncode != 0:
        sample.error = f"exit {launch.returncode}: {launch.tail()}"
    elif check is not None:
        sample.error = check(out_file.read_text(errors="replace"))
    return sample


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: ``date +%s%N`` output: nanoseconds since the epoch (19 digits until 2286).
_STAMP = re.compile(rb"(?<![0-9])1[0-9]{18}(?![0-9])")


def stamps_in(*paths: Path) -> List[int]:
    """Every ``date +%s%N`` timestamp in these files (rank prefixes and all)."""
    found: List[int] = []
    for path in paths:
        try:
            found += [int(m) for m in _STAMP.findall(path.read_bytes())]
        except OSError:
            pass
    return found


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


def term_delivery(
    argv: Sequence[str],
    env: Dict[str, str],
    workdir: Path,
    fifo: Fifo,
    workers: int,
    timeout: float,
) -> Sample:
    """SIGTERM to the launcher once ``workers`` announced; ``value``: seconds until the
    last worker had SIGTERM (each writes the CLOCK_MONOTONIC time its handler ran);
    ``extra['exit_s']``: until the launcher exited. Workers run ``--report-term``."""
    launch = Launch.start(argv, env, workdir / "launcher.log")
    pids: List[int] = []
    try:
        pids = pids_in(fifo.expect(workers, timeout=timeout, launcher=launch))
        event_ns = time.monotonic_ns()
        os.kill(launch.pid, signal.SIGTERM)
        end = launch.wait(timeout)
        got = [line.split() for line in fifo.expect(workers, timeout=5.0)]
        terms = [int(parts[2]) for parts in got if parts[0] == "term"]
        if len(terms) != workers:
            raise BenchError(f"expected {workers} SIGTERM reports, got {got}")
        sample = Sample(value=(max(terms) - event_ns) / 1e9, rc=launch.returncode)
        sample.extra["exit_s"] = (end - event_ns) / 1e9
        sample.extra["first_s"] = (min(terms) - event_ns) / 1e9
        sample.survivors = len(wait_gone(pids, SURVIVOR_GRACE_S))
        return sample
    finally:
        kill_pids(pids)
        launch.close()


def many_launches(
    argvs: Sequence[Sequence[str]],
    env: Dict[str, str],
    workdir: Path,
    timeout: float,
    workers: int,
) -> Sample:
    """Start every argv at once (elastic agents, one per emulated node) and time the job.

    ``value``: from just before the first start to the last worker running (each worker is
    ``date +%s%N``); ``extra['exit_s']``: to the last launcher's exit. Every launcher must
    exit 0 and ``workers`` timestamps must appear.
    """
    before = time.time_ns()
    started = time.monotonic_ns()
    launches: List[Tuple[Launch, Path]] = []
    try:
        for index, argv in enumerate(argvs):
            out = workdir / f"stdout.{index}"
            launches.append((Launch.start(argv, env, workdir / f"launcher.{index}.log",
                                          stdout=out), out))
        deadline = time.monotonic() + timeout
        ends = [launch.wait(max(0.1, deadline - time.monotonic())) for launch, _ in launches]
    finally:
        for launch, _ in launches:
            launch.close()
    failed = [(launch.returncode, launch.tail()) for launch, _ in launches
              if launch.returncode != 0]
    if failed:
        return Sample(error=f"{len(failed)} launcher(s) failed, first: exit {failed[0][0]}: "
                            f"{failed[0][1]}")
    found = stamps_in(*(out for _, out in launches))
    if len(found) < workers:
        return Sample(error=f"{len(found)} of {workers} workers reported running")
    sample = Sample(value=(max(found) - before) / 1e9, rc=0)
    sample.extra["exit_s"] = (max(ends) - started) / 1e9
    return sample
