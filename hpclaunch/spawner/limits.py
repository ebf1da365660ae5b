"""Why ``fork()`` failed, in the words of the limit that refused it.

``fork`` says only EAGAIN (or ENOMEM). On a cluster the usual cause is a process limit the
job was started under: the pids controller of its cgroup (Slurm's, a container's, a
systemd slice's ``TasksMax``), ``RLIMIT_NPROC`` (``ulimit -u``, per user, not applied to
root), or the kernel's own ``threads-max``/``pid_max``. Reading them names the one that is
full, so the user knows what to raise, or how many workers fit. Read only after a fork
failed: nothing here runs on a launch that works.
"""

from __future__ import annotations

import errno
import os
from typing import List, Optional, Tuple


def fork_failure(exc: OSError) -> str:
    """``fork failed (<strerror>): <the limit that refused it>``."""
    what = exc.strerror or str(exc)
    if exc.errno not in (errno.EAGAIN, errno.ENOMEM):
        return f"fork failed ({what})"
    return f"fork failed ({what}): {full_limit() or 'a process limit or memory ran out'}"


def full_limit() -> str:
    """The process limit that is reached now, described; "" if none of them is."""
    for check in (_pids_cgroup, _nproc_rlimit, _kernel_limit):
        found = check()
        if found:
            return found
    return ""


def _pids_cgroup() -> str:
    """The pids cgroup that is full, or that has refused a fork (``pids.events``' ``max``
    counts those: the processes may be gone by the time this reads it)."""
    for directory in _pids_cgroup_dirs():
        maximum, current = _read(directory, "pids.max"), _read(directory, "pids.current")
        if not (maximum.isdigit() and current.isdigit()):
            continue
        refused = _read(directory, "pids.events").split()
        if int(current) >= int(maximum) or refused[-1:] not in ([], ["0"]):
            return (f"the pids cgroup {directory} allows {maximum} processes (pids.max, "
                    f"{current} now)")
    return ""


def _pids_cgroup_dirs() -> List[str]:
    """This process's pids cgroup and its ancestors (the one that is full may be any)."""
    try:
        with open("/proc/self/cgroup") as handle:
            entries = [line.rstrip("\n").split(":", 2) for line in handle]
    except OSError:
        return []
    found: List[Tuple[str, str]] = []
    for entry in entries:
        if len(entry) != 3:
            continue
        _, controllers, path = entry
        if "pids" in controllers.split(","):
            found.append(("/sys/fs/cgroup/pids", path))
        elif controllers == "":
            found.append(("/sys/fs/cgroup", path))  # the unified (v2) hierarchy
    dirs = []
    for root, path in found:
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), 0, -1):
            dirs.append(os.path.join(root, *parts[:depth]))
    return dirs


def _nproc_rlimit() -> str:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY or os.geteuid() == 0:
        return ""  # root is not held to it (CAP_SYS_RESOURCE)
    mine = _tasks_of(os.getuid())
    if mine is None or mine < soft:
        return ""
    return (f"RLIMIT_NPROC ('ulimit -u') allows user {os.getuid()} {soft} processes and it "
            f"has {mine}")


def _tasks_of(uid: int) -> Optional[int]:
    """Threads (each counts against RLIMIT_NPROC) of processes whose real uid is ``uid``."""
    count = 0
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1").strip() or "1")
    return count


def _kernel_limit() -> str:
    threads_max = _read("/proc/sys/kernel", "threads-max")
    running = _read("/proc", "loadavg").split()
    if len(running) >= 4 and "/" in running[3] and threads_max.isdigit():
        total = running[3].split("/")[1]
        if total.isdigit() and int(total) >= int(threads_max):
            return f"the kernel's threads-max ({threads_max}) is reached"
    return ""


def _read(directory: str, name: str) -> str:
    try:
        with open(os.path.join(directory, name)) as handle:
            return handle.read().strip()
    except OSError:
        return ""
