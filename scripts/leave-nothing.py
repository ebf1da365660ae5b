#!/usr/bin/env python3
"""The test command's last step: did the tests leave anything behind on this machine?

    leave-nothing.py snapshot FILE   # before the tests: record the machine's state in FILE
    leave-nothing.py check FILE      # after: list what is new; exit 1 under CI=true

The state is what tests could change for good: /etc/hosts lines, network namespaces
(``ip netns``), network links (``ip link``), /etc/netns, /run (two levels), the temp dir's
top level and /dev/shm, and the processes of daemons the tests start (Slurm, munge, MPI
runtimes, hpclaunch). Only additions count: what disappeared was not the tests' doing to
undo. Outside CI the check only reports, since other work on the machine changes it too.
Standard library only: it runs before and after everything else is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

#: Process names (``/proc/<pid>/comm``) of daemons the tests start.
DAEMONS = {
    "slurmctld", "slurmd", "slurmstepd", "munged", "prterun", "prted", "mpirun", "mpiexec",
    "mpiexec.hydra", "hydra_pmi_proxy", "hpclaunch",
}


def _lines(argv: List[str]) -> List[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.splitlines() if done.returncode == 0 else []


def _tree(top: str, depth: int) -> List[str]:
    """Paths under ``top`` down to ``depth`` levels (not following links)."""
    found: List[str] = []
    try:
        entries = sorted(os.scandir(top), key=lambda entry: entry.name)
    except OSError:
        return found
    for entry in entries:
        found.append(entry.path)
        if depth > 1 and entry.is_dir(follow_symlinks=False):
            found.extend(_tree(entry.path, depth - 1))
    return found


def _link_names() -> List[str]:
    # "3: hpclb0v1@if2: <...>" -> "hpclb0v1"
    return sorted(line.split(":")[1].strip().split("@")[0] for line in _lines(["ip", "-o", "link"]))


def _daemons() -> List[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as handle:
                name = handle.read().strip()
        except OSError:
            continue
        if name in DAEMONS:
            found.append(f"{name} (pid {pid})")
    return sorted(found)


def _etc_hosts() -> List[str]:
    try:
        with open("/etc/hosts") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except OSError:
        return []


def snapshot() -> Dict[str, List[str]]:
    return {
        "/etc/hosts line": _etc_hosts(),
        "network namespace": sorted(line.split()[0] for line in _lines(["ip", "netns", "list"])),
        "network link": _link_names(),
        "/etc/netns entry": _tree("/etc/netns", 3),
        "/run entry": _tree("/run", 2),
        "temp dir entry": _tree(tempfile.gettempdir(), 1),
        "/dev/shm entry": _tree("/dev/shm", 1),
        "daemon": _daemons(),
    }


def added(before: Dict[str, List[str]], after: Dict[str, List[str]]) -> List[str]:
    """One line per thing present after and not before, e.g. ``network link: hpclb0``."""
    lines = []
    for kind, items in after.items():
        old = set(before.get(kind, []))
        lines.extend(f"{kind}: {item}" for item in items if item not in old)
    return lines


def main(argv: List[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("snapshot", "check"):
        print("usage: leave-nothing.py snapshot|check FILE", file=sys.stderr)
        return 2
    command, path = argv
    if command == "snapshot":
        with open(path, "w") as handle:
            json.dump(snapshot(), handle)
        return 0
    with open(path) as handle:
        before = json.load(handle)
    left = added(before, snapshot())
    if not left:
        print("leave-nothing: the tests left nothing behind")
        return 0
    print("leave-nothing: the tests left these behind:", file=sys.stderr)
    for line in left:
        print(f"  {line}", file=sys.stderr)
    if os.environ.get("CI", "").lower() == "true":
        return 1
    print("leave-nothing: (not failing: CI is not true; other work may have made these)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
