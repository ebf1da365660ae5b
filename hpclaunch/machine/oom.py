"""Did the kernel's OOM killer end that worker? The kernel's own counters say.

The OOM killer ends its victim with SIGKILL, which looks like any other ``kill -9``. What
tells them apart is the kernel's count of OOM kills, read before the job and again when a
worker dies of SIGKILL that the launcher did not send:

* cgroup v2: ``oom_kill`` in the launcher's cgroup's ``memory.events`` (hierarchical: kills
  in child cgroups count too) -- Slurm's task cgroup, a container, a systemd scope;
* cgroup v1: ``oom_kill`` in the memory controller's ``memory.oom_control`` (kernel 4.13+;
  this cgroup's own kills only);
* otherwise (the root cgroup has neither file): ``oom_kill`` in ``/proc/vmstat``, the whole
  machine's count -- on a machine shared with other jobs, a kill there at the same moment
  could be blamed on a worker; the cgroup counters are exact for the launcher's cgroup.

Workers inherit the launcher's cgroup, which is why the launcher's is the one read. A kill
counted but not explained by a dead worker (a data-loader child of a worker was the victim)
stays in :attr:`OomWatch.kills` for the job's record.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

VMSTAT = "/proc/vmstat"


def _mounts(fstype: str, option: str = "") -> List[Tuple[str, str]]:
    """(root within the hierarchy, mount point) of each mount of ``fstype`` (with
    ``option`` among its super options, for a v1 controller), from /proc/self/mountinfo."""
    found = []
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(fields) < 5 or len(tail) < 3 or tail[0] != fstype:
                    continue
                if option and option not in tail[2].split(","):
                    continue
                found.append((fields[3], fields[4].replace("\\040", " ")))
    except OSError:
        pass
    return found


def _own_cgroups() -> List[Tuple[str, str]]:
    """(controllers, path) per line of /proc/self/cgroup: ``("", path)`` is cgroup v2."""
    lines = []
    try:
        with open("/proc/self/cgroup") as handle:
            for line in handle:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    lines.append((parts[1], parts[2]))
    except OSError:
        pass
    return lines


def _inside(mount_root: str, mount_point: str, path: str) -> str:
    """The directory of cgroup ``path`` under a mount of (part of) its hierarchy."""
    if mount_root != "/" and path.startswith(mount_root):
        path = path[len(mount_root):]
    return os.path.join(mount_point, path.lstrip("/"))


def counter_file() -> Tuple[str, str]:
    """(file, what it covers) holding this process's OOM kill count (see the module doc)."""
    for controllers, path in _own_cgroups():
        if controllers == "":
            for root, point in _mounts("cgroup2"):
                candidate = os.path.join(_inside(root, point, path), "memory.events")
                if os.path.exists(candidate):
                    return candidate, "cgroup"
        elif "memory" in controllers.split(","):
            for root, point in _mounts("cgroup", "memory"):
                candidate = os.path.join(_inside(root, point, path), "memory.oom_control")
                if os.path.exists(candidate):
                    return candidate, "cgroup"
    return VMSTAT, "machine"


def read_oom_kills(path: str) -> Optional[int]:
    """The ``oom_kill N`` count in ``path``; None if the file or the line is not there."""
    try:
        with open(path, "rb") as handle:
            for line in handle:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class OomWatch:
    """OOM kills since the launch began, handed out one per SIGKILLed worker that needs one."""

    def __init__(self) -> None:
        self.path, self.scope = counter_file()
        self.baseline = read_oom_kills(self.path)
        #: Kills already blamed on a worker.
        self.blamed = 0

    @property
    def kills(self) -> int:
        """OOM kills counted since the launch began (0 where no counter is readable)."""
        if self.baseline is None:
            return 0
        now = read_oom_kills(self.path)
        return max(0, (now or 0) - self.baseline)

    def claim(self) -> bool:
        """A worker just died of a SIGKILL nobody here sent: True if an OOM kill not yet
        blamed on another worker explains it (the kernel counts the kill before the victim
        can exit, so the count is there by the time the worker is reaped)."""
        if self.kills > self.blamed:
            self.blamed += 1
            return True
        return False


__all__ = ["OomWatch", "counter_file", "read_oom_kills"]
