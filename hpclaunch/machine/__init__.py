"""What reads this machine: GPUs, the NUMA topology, the network.

Kept apart from the pure model (:mod:`hpclaunch.model`) and from what starts processes
(:mod:`hpclaunch.spawner`): these functions do I/O (sysfs, /proc, sockets) and hand plain
values to the model. Files are read below a root directory passed in ("/" for the real
machine), so the tests run them on recorded trees (``tests/fixtures/topology/``).

Every reader answers "not there" for an absent file instead of raising: a kernel without a
file (no NUMA, no GPU driver, an old kernel) is a fact about the machine, not a failure.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

#: Test-only: a directory to read sysfs/proc from instead of "/" (a recorded machine).
ROOT_VAR = "HPCLAUNCH_TOPOLOGY_ROOT"


def read(root: str, path: str) -> Optional[str]:
    try:
        with open(os.path.join(root, path.lstrip("/")), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def listdir(root: str, path: str) -> List[str]:
    try:
        return os.listdir(os.path.join(root, path.lstrip("/")))
    except OSError:
        return []


def fields(text: str, separator: Optional[str]) -> Dict[str, str]:
    """``Key: value`` lines (NVIDIA, /proc status) or ``key value`` lines (KFD properties)."""
    found: Dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(separator) if separator else line.partition(" ")
        if key.strip():
            found[key.strip()] = value.strip()
    return found


def to_int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None
