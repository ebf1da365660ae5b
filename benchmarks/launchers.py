"""The launchers under test and how each one is invoked, found without installing anything.

Discovery never imports torch or deepspeed (``import torch`` alone takes seconds here):
package metadata says whether and which version is installed, and the console scripts are
taken from this interpreter's own scripts directory, not from PATH, where a pyenv shim (a
bash script that re-resolves the interpreter) would add its own start-up to every sample.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import shlex
import sys
import sysconfig
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

HPCLAUNCH, TORCHRUN, DEEPSPEED = "hpclaunch", "torchrun", "deepspeed"
LAUNCHERS = (HPCLAUNCH, TORCHRUN, DEEPSPEED)
#: Versions the comparison is defined for (issue 7); others still run, with a note.
EXPECTED = {TORCHRUN: "2.13.0", DEEPSPEED: "0.19.8"}


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _script(name: str) -> Optional[str]:
    """The console script next to this interpreter (same environment, no shim)."""
    path = os.path.join(sysconfig.get_path("scripts"), name)
    return path if os.access(path, os.X_OK) else None


@dataclass(frozen=True)
class Launcher:
    """One launcher: how to start N workers of a command, or why it cannot run here."""

    name: str
    prefix: Sequence[str]
    version: Optional[str]
    missing: Optional[str] = None  # why it is skipped; None = available

    def argv(
        self,
        nproc: int,
        command: Sequence[str],
        *,
        python: bool,
        local_rank: bool = True,
        port: int = 29500,
        extra: Sequence[str] = (),
    ) -> List[str]:
        """``nproc`` workers running ``command`` (a Python script when ``python``).

        ``local_rank=False`` asks for no ``--local_rank=N`` argument (for /usr/bin/date);
        torchrun never passes one. ``extra`` are launcher-specific flags.
        """
        script, *args = command
        if self.name == HPCLAUNCH:
            flags = ["--nproc_per_node", str(nproc), "--master_port", str(port)]
            flags += [] if python else ["--no_python"]
            flags += [] if local_rank else ["--no_local_rank"]
        elif self.name == TORCHRUN:
            # --standalone: a private c10d store on a free port, as users run one node.
            flags = ["--standalone", "--nproc_per_node", str(nproc)]
            flags += [] if python else ["--no-python"]
        else:
            # DeepSpeed's runner always passes world_info, node_rank, master addr/port.
            world = base64.urlsafe_b64encode(
                json.dumps({"localhost": list(range(nproc))}).encode()
            ).decode()
            flags = ["--world_info", world, "--node_rank", "0", "--master_addr", "127.0.0.1",
                     "--master_port", str(port)]
            flags += [] if python else ["--no_python"]
            flags += [] if local_rank else ["--no_local_rank"]
        return [*self.prefix, *flags, *extra, script, *args]

    def describe(self) -> str:
        if self.missing:
            return f"{self.name}: not run ({self.missing})"
        note = ""
        expected = EXPECTED.get(self.name)
        if expected and self.version and not self.version.startswith(expected):
            note = f" (issue 7 compares against {expected})"
        return f"{self.name} {self.version}{note}: `{shlex.join(self.prefix)}`"


def find(selected: Sequence[str]) -> Dict[str, Launcher]:
    """Every launcher, available or with the reason it is skipped."""
    found: Dict[str, Launcher] = {}
    hpc = _script("hpclaunch")
    found[HPCLAUNCH] = Launcher(
        HPCLAUNCH, [hpc] if hpc else [sys.executable, "-m", "hpclaunch"], _version("hpclaunch")
    )
    torch_version = _version("torch")
    run = _script("torchrun")
    found[TORCHRUN] = Launcher(
        TORCHRUN,
        [run] if run else [sys.executable, "-m", "torch.distributed.run"],
        torch_version,
        None if torch_version else "torch not installed: pip install torch==2.13.0",
    )
    ds_version = _version("deepspeed")
    found[DEEPSPEED] = Launcher(
        DEEPSPEED,
        [sys.executable, "-u", "-m", "deepspeed.launcher.launch"],  # as DeepSpeed's runner does
        ds_version,
        None if ds_version else "deepspeed not installed: see benchmarks/README.md",
    )
    for name in LAUNCHERS:
        if name not in selected and found[name].missing is None:
            launcher = found[name]
            found[name] = Launcher(name, launcher.prefix, launcher.version, "not selected")
    return found


def bash_loop(nproc: int, command: Sequence[str], env: Dict[str, str]) -> List[str]:
    """The floor: a bash loop that sets the rank variables itself and waits for every worker.

    Exits non-zero if any worker did, so a broken floor run is noticed like a launcher's.
    """
    lines = []
    for rank in range(nproc):
        assign = " ".join(f"{k}={shlex.quote(v.format(rank=rank))}" for k, v in env.items())
        lines.append(f"{assign} {shlex.join(command)} & pids=\"$pids $!\"")
    body = "; ".join(lines)
    wait_all = "for p in $pids; do wait $p || rc=$?; done; exit $rc"
    return ["bash", "-c", f"pids=; rc=0; {body}; {wait_all}"]


def torch_available() -> bool:
    return _version("torch") is not None
