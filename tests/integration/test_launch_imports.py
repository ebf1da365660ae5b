"""The plain launch path imports per need: a static launch of an executable loads none of the
modules only elastic mode, the MPI adapter, plug-ins or the dry-run's big-world writer need,
nor the adapters of schedulers it is not under (detected by their variables alone) or the
torchrun command's."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

#: Each costs milliseconds of every launch's start-up (inspect alone ~10 ms here).
HEAVY = ("torch", "mpi4py", "psutil", "dataclasses", "inspect", "importlib.metadata",
         "hpclaunch.model.elastic", "hpclaunch.spawner.elastic.launcher", "shutil",
         "socket", "hpclaunch.adapters.pbs", "hpclaunch.adapters.lsf",
         "hpclaunch.adapters.kubeflow", "hpclaunch.adapters.torchrun",
         "hpclaunch.adapters.hostfile", "hpclaunch.torchrun",
         # Schedulers this launch is not under: detected by their variables alone.
         "hpclaunch.adapters.slurm", "hpclaunch.adapters.mpi", "hpclaunch.model.hostlist",
         # Only for --dry-run/--help/--version, or with per-rank logs.
         "hpclaunch.stdout", "hpclaunch.spawner.output.ranklog",
         # Ending a Slurm step on every node: only under Slurm.
         "hpclaunch.spawner.scheduler",
         # Taking stacks and watching for stalls: imported at a dump or with --stall_timeout.
         "hpclaunch.spawner.stacks", "hpclaunch.spawner.stall", "faulthandler")

PROGRAM = """
import json, sys
from hpclaunch import cli
status = cli.main(["-q", "--nproc_per_node", "2", "--no_python", "/bin/true"])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


def test_a_static_launch_imports_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["status"] == 0
    assert "hpclaunch.spawner.supervisor" in report["modules"]  # it did launch
    assert [name for name in HEAVY if name in report["modules"]] == []
