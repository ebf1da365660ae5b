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

Processes count only if this run started them: the test command exports
:data:`RUN_VAR` (a random token) before the tests, every process they start inherits it,
and only a process whose environment carries the snapshot's token is listed, so a launch
or a Slurm daemon that someone else runs on the machine meanwhile is not. Without the
variable (a snapshot taken by hand), a daemon counts when it was not running at the
snapshot (same PID and start time).
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

#: The variable the test command exports to mark every process of its run.
RUN_VAR = "HPCLAUNCH_TEST_RUN"


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


def _start_ticks(pid: str) -> str:
    """When the process started (clock ticks since boot): tells it from a later one that
    reuses its PID."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[19]


def _carries(pid: str, token: str) -> bool:
    """Whether the process's environment holds ``RUN_VAR=token`` (a process this run started)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return f"{RUN_VAR}={token}".encode() in handle.read().split(b"\0")
    except OSError:
        return False


def _daemons(token: str = "") -> List[str]:
    """Daemons running now, as ``name (pid N, start T)``; with ``token``, only this run's."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as handle:
                name = handle.read().strip()
            if name not in DAEMONS or (token and not _carries(pid, token)):
                continue
            found.append(f"{name} (pid {pid}, start {_start_ticks(pid)})")
        except (OSError, IndexError):
            continue
    return sorted(found)


def _etc_hosts() -> List[str]:
    try:
        with open("/etc/hosts") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except OSError:
        return []


def snapshot(token: str = "") -> Dict[str, List[str]]:
    return {
        "/etc/hosts line": _etc_hosts(),
        "network namespace": sorted(line.split()[0] for line in _lines(["ip", "netns", "list"])),
        "network link": _link_names(),
        "/etc/netns entry": _tree("/etc/netns", 3),
        "/run entry": _tree("/run", 2),
        "temp dir entry": _tree(tempfile.gettempdir(), 1),
        "/dev/shm entry": _tree("/dev/shm", 1),
        "daemon": _daemons(token),
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
        token = os.environ.get(RUN_VAR, "")
        with open(path, "w") as handle:
            json.dump({"token": token, "state": snapshot()}, handle)
        return 0
    with open(path) as handle:
        saved = json.load(handle)
    left = added(saved["state"], snapshot(saved["token"]))
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
