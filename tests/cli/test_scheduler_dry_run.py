"""``hpclaunch --dry-run`` under each recorded scheduler environment gives the right world.

The real command line in a clean environment holding only the job's variables, run in a
private UTS namespace whose hostname is the recorded host's (``unshare --uts``), so that
auto-detection, the host's place in the job and the plan are all the real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import require
from tests.unit.recorded_jobs import EXPECTED, REFUSED, load_job

IS_ROOT = os.geteuid() == 0


def as_host(
    hostname: str, argv: List[str], env: Dict[str, str]
) -> subprocess.CompletedProcess[str]:
    require(IS_ROOT and shutil.which("unshare") is not None, "root and unshare(1)")
    wrapped = ["unshare", "--uts", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh",
               hostname, *argv]
    return subprocess.run(wrapped, env=env, capture_output=True, text=True, timeout=60)


def clean_env(job_env: Dict[str, str]) -> Dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update(job_env)
    return env


def dry_run(name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    job = load_job(name, tmp_path)
    argv = [sys.executable, "-m", "hpclaunch", "--dry-run", "--no_python", "/bin/true"]
    return as_host(job.hostname, argv, clean_env(job.env))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_under_recorded_job(name: str, tmp_path: Path) -> None:
    expected = EXPECTED[name]
    result = dry_run(name, tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["adapter"] == expected.adapter
    assert shown["node_rank"] == expected.node_rank
    assert shown["world_info"] == expected.world_info
    assert (shown["master_addr"], shown["master_port"]) == (
        expected.master_addr, expected.master_port)
    assert shown["run_id"] == expected.run_id
    assert [w["rank"] for w in shown["workers"]] == expected.ranks
    size = sum(len(slots) for slots in expected.world_info.values())
    for local_rank, worker in enumerate(shown["workers"]):
        env = worker["env"]
        assert env["RANK"] == str(expected.ranks[local_rank])
        assert env["LOCAL_RANK"] == str(local_rank)
        assert env["WORLD_SIZE"] == str(size)
        assert (env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]) == (
            str(expected.node_rank), str(len(expected.world_info)))
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == (
            expected.master_addr, str(expected.master_port))
        assert env.get("CUDA_VISIBLE_DEVICES") == expected.gpus


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_recorded_wrong_launch_is_one_line_exit_2(name: str, tmp_path: Path) -> None:
    result = dry_run(name, tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpclaunch: error: ")
    assert REFUSED[name] in lines[0]


@pytest.mark.parametrize(
    "env, names",
    [
        ({"PBS_JOBID": "9.s", "PBS_NODEFILE": "/nonexistent/nodefile"}, "PBS_NODEFILE"),
        ({"PET_NNODES": "2", "PET_NODE_RANK": "1"}, "PET_MASTER_ADDR is not set"),
        ({"PET_NNODES": "2", "PET_MASTER_ADDR": "m"}, "PET_NODE_RANK is not set"),
        ({"LSB_JOBID": "9", "LSB_MCPU_HOSTS": "elsewhere 4"}, "is not among the job's hosts"),
    ],
)
def test_incomplete_job_environment_is_one_line(env: Dict[str, str], names: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hpclaunch", "--dry-run", "--no_python", "/bin/true"],
        env=clean_env(env), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and names in result.stderr


def test_forced_adapter_outside_its_job_names_the_variable() -> None:
    for adapter, variable in (("pbs", "PBS_JOBID"), ("lsf", "LSB_JOBID"),
                              ("kubeflow", "PET_NODE_RANK")):
        result = subprocess.run(
            [sys.executable, "-m", "hpclaunch", "--adapter", adapter, "--dry-run",
             "--no_python", "/bin/true"],
            env=clean_env({}), capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"hpclaunch: error: {variable} is not set")
