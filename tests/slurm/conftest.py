"""A real Slurm cluster for the tests in this folder, started once per session.

Needs the Debian packages ``slurmctld slurmd slurm-client munge`` (scripts/install-slurm.sh)
and root (slurmd, mknod, a private mount namespace per daemon). Outside CI a missing piece
skips these tests; with ``CI=true`` it fails them, so a green CI always means the real
cluster ran.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.conftest import require
from tests.slurm.cluster import SlurmCluster, missing_programs

ROOT = Path(__file__).resolve().parents[2]


def launcher() -> List[str]:
    """The installed ``hpclaunch`` entry point beside this Python, else ``python -m``."""
    script = Path(sys.executable).parent / "hpclaunch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "hpclaunch"]


@pytest.fixture(scope="session")
def slurm_installed() -> None:
    missing = missing_programs()
    require(
        not missing,
        f"Slurm is not installed (missing {', '.join(missing)}): run scripts/install-slurm.sh",
    )


@pytest.fixture(scope="session")
def slurm_cluster(
    slurm_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SlurmCluster]:
    require(os.geteuid() == 0, "the test cluster needs root (slurmd, mknod, mount namespaces)")
    root = tmp_path_factory.mktemp("slurm")
    # PYTHONPATH: every srun/sbatch task imports the hpclaunch under test, even where an
    # editable install of another checkout provides the ``hpclaunch`` entry point.
    cluster = SlurmCluster(root, nodes=3, extra_env={"PYTHONPATH": str(ROOT)})
    try:
        cluster.start()
    except Exception as exc:
        logs = root / "log"
        tail = ""
        for log in sorted(logs.glob("*")):
            tail += f"\n--- {log.name}\n" + log.read_text(errors="replace")[-1500:]
        cluster.stop()
        pytest.fail(f"could not start the Slurm test cluster: {exc}{tail}")
    try:
        yield cluster
    finally:
        cluster.stop()
