"""A real memory cgroup for one test: a child cgroup with a memory limit, a launcher started
inside it, the kernel's own OOM kill count, and nothing left behind.

cgroup v2 (``memory.max``, ``memory.events``) where the memory controller is on the unified
hierarchy, else cgroup v1 (``memory.limit_in_bytes``, ``memory.oom_control``), as on hybrid
hosts. The cgroup is made under the one this test process is in (v1) or under the v2 root,
whose controllers are not changed; it is removed on exit, after whatever is still in it
(only processes this test started) is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tests.conftest import require


def _mounts(fstype: str) -> List[Tuple[str, str, str]]:
    """(root, mount point, super options) of each mount of ``fstype``."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if tail and tail[0] == fstype:
                found.append((fields[3], fields[4], tail[2] if len(tail) > 2 else ""))
    return found


def _own_path(controller: str) -> Optional[str]:
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == controller or controller in controllers.split(","):
                return path
    return None


def find_parent() -> Tuple[Optional[Path], str]:
    """(where to make the test's cgroup, "v2" or "v1"), or (None, why not)."""
    if os.geteuid() != 0:
        return None, "root"
    for _, point, _ in _mounts("cgroup2"):
        root = Path(point)
        try:
            if "memory" in (root / "cgroup.subtree_control").read_text().split():
                return root, "v2"
        except OSError:
            continue
    path = _own_path("memory")
    for root, point, options in _mounts("cgroup"):
        if path is not None and "memory" in options.split(","):
            inside = path[len(root):] if root != "/" and path.startswith(root) else path
            return Path(point) / inside.lstrip("/"), "v1"
    return None, "a memory cgroup controller (cgroup v2 memory, or v1 memory)"


class MemoryCgroup:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.path: Optional[Path] = None
        self.version = ""

    def __enter__(self) -> MemoryCgroup:
        parent, version = find_parent()
        require(parent is not None and os.access(parent, os.W_OK), f"{version} (writable)")
        assert parent is not None
        self.version = version
        self.path = parent / f"hpclaunch-test-{uuid.uuid4().hex[:12]}"
        self.path.mkdir()
        try:
            if version == "v2":
                (self.path / "memory.max").write_text(str(self.limit))
                swap = self.path / "memory.swap.max"
                if swap.exists():
                    swap.write_text("0")
            else:
                (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
                swap = self.path / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    swap.write_text(str(self.limit))
        except BaseException:
            self.path.rmdir()
            raise
        return self

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """``argv`` started inside the cgroup (a shell moves itself in, then execs it)."""
        assert self.path is not None
        procs = self.path / "cgroup.procs"
        return subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def oom_kills(self) -> int:
        assert self.path is not None
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        raise AssertionError(f"no oom_kill count in {self.path / name}")

    def __exit__(self, *exc: object) -> None:
        assert self.path is not None
        deadline = time.monotonic() + 30
        while True:
            left = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            for pid in left:  # only what this test started can be in it
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the kernel frees a dead cgroup's last pages on its own time
