"""hpclaunch's public API without spawning: detect_world on each kind of environment, plan,
and the import-weight rule (checked in a fresh interpreter through ``sys.modules``).

The Slurm environment is the one a 2-node ``srun --ntasks-per-node=1 --gpus-per-node=2``
step shows on its second node (variables as measured on Slurm 22.05, see /work notes).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Dict

import pytest

import hpclaunch
from hpclaunch.errors import AdapterError, UsageError
from tests.conftest import ROOT, WORKER

SLURM_STEP = {
    "SLURM_JOB_ID": "41", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NODEID": "1",
    "SLURM_LOCALID": "0", "SLURMD_NODENAME": "hlnode2", "SLURM_STEP_NODELIST": "hlnode[1-2]",
    "SLURM_JOB_NODELIST": "hlnode[1-2]", "SLURM_STEP_NUM_NODES": "2", "SLURM_NNODES": "2",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_TASKS_PER_NODE": "1(x2)",
    "SLURM_STEP_GPUS": "0,1", "SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1",
}
WORLD_INFO = base64.urlsafe_b64encode(b'{"a": [0, 1], "b": [2, 3, 4]}').decode()


def test_slurm_step() -> None:
    world = hpclaunch.detect_world(SLURM_STEP)
    assert world.world_info() == {"hlnode1": [0, 1], "hlnode2": [0, 1]}
    assert (world.node_rank, world.master_addr, world.run_id) == (1, "hlnode1", "41.0")
    assert list(world.global_ranks()) == [2, 3] and world.local_world_size == 2
    assert world.world_size == 4
    assert hpclaunch.plan(world, [WORKER]).adapter == "slurm"


def test_explicit_world_info_wins_over_the_environment() -> None:
    world = hpclaunch.detect_world(SLURM_STEP, world_info=WORLD_INFO, node_rank=1,
                                   master_addr="10.0.0.1", master_port=4242)
    assert world.world_info() == {"a": [0, 1], "b": [2, 3, 4]}
    assert list(world.global_ranks()) == [2, 3, 4]
    assert (world.master_addr, world.master_port) == ("10.0.0.1", 4242)
    assert hpclaunch.plan(world, [WORKER]).adapter == "explicit"


def test_local_machine() -> None:
    world = hpclaunch.detect_world({}, nproc_per_node=3)
    assert world.num_nodes == 1 and world.local_world_size == 3 and not world.gpu_slots
    assert world.master_addr == "127.0.0.1"


def test_a_forced_adapter_and_bad_options_raise_one_line_errors() -> None:
    with pytest.raises(AdapterError, match="SLURM_JOB_ID"):
        hpclaunch.detect_world({}, adapter="slurm")
    with pytest.raises(UsageError, match="unknown adapter 'nope'"):
        hpclaunch.detect_world({}, adapter="nope")
    with pytest.raises(UsageError, match="--nproc_per_node 0 must be at least 1"):
        hpclaunch.detect_world({}, nproc_per_node=0)
    with pytest.raises(UsageError, match="--master_port 70000"):
        hpclaunch.detect_world({}, master_port=70000)


def test_adapter_notes_reach_the_reporter(capfd: pytest.CaptureFixture[str]) -> None:
    """A one-node sbatch shell is run locally; the adapter says so through the reporter."""
    shell = {"SLURM_JOB_ID": "9", "SLURM_PROCID": "0", "SLURM_JOB_NUM_NODES": "1",
             "SLURMD_NODENAME": "n1", "SLURM_JOB_NODELIST": "n1"}
    capfd.readouterr()
    world = hpclaunch.detect_world(shell, nproc_per_node=1)
    assert world.run_id == "9.batch"
    assert capfd.readouterr().err == (
        "hpclaunch: not inside srun: job 9 has one node, so its workers start from this "
        "batch shell\n"
    )


def test_plan_is_what_dry_run_prints(tmp_path: object) -> None:
    world = hpclaunch.detect_world({}, world_info=WORLD_INFO, node_rank=1)
    plan = hpclaunch.plan(world, [WORKER, "--x", "$y"], log_dir="/tmp/logs",
                          log_timestamp="20260101000000")
    shown = json.loads(subprocess.run(
        [sys.executable, "-m", "hpclaunch", "--world_info", WORLD_INFO, "--node_rank", "1",
         "--enable_each_rank_log", "/tmp/logs", "--dry-run", WORKER, "--x", "$y"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout)
    mine = json.loads(json.dumps(plan.to_json()))  # JSON-equal: slot lists may be tuples
    for shown_worker in shown["workers"]:  # the CLI's timestamp is its own "now"
        shown_worker["log_path"] = shown_worker["log_path"].rsplit("_", 1)[-1]
    for worker in mine["workers"]:
        assert worker["log_path"].startswith("/tmp/logs/20260101000000_rank")
        worker["log_path"] = worker["log_path"].rsplit("_", 1)[-1]
    assert mine == shown
    assert [w["env"]["RANK"] for w in mine["workers"]] == ["2", "3", "4"]
    assert mine["workers"][0]["argv"][-3:] == ["--local_rank=0", "--x", "$y"]


def test_plan_checks_the_command_and_elastic_options() -> None:
    world = hpclaunch.detect_world({}, nproc_per_node=2)
    with pytest.raises(UsageError, match="training script 'missing.py' not found"):
        hpclaunch.plan(world, ["missing.py"])
    command = hpclaunch.resolve_command("json.tool", module=True, local_rank=False)
    plan = hpclaunch.plan(world, command, elastic=hpclaunch.ElasticOptions(max_restarts=1))
    assert plan.workers[1].argv[-3:] == (sys.executable, "-u", "-m", "json.tool")[-3:]
    elastic = plan.to_json()["elastic"]
    assert elastic["max_restarts"] == 1 and elastic["nproc_per_node"] == 2
    assert elastic["rendezvous"]["run_id"] == world.run_id
    with pytest.raises(UsageError, match="--max_elastic_nodes"):
        hpclaunch.plan(world, command, elastic=hpclaunch.ElasticOptions(max_nodes=0))


IMPORT_CHECK = """
import json, sys
import hpclaunch
env = json.loads(sys.argv[1])
world = hpclaunch.detect_world(env, world_info=sys.argv[2] or None)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "mpi4py", "ctypes",
               "numpy", "psutil") or m.startswith(("hpclaunch.spawner", "importlib.metadata")))
print(json.dumps({"heavy": heavy, "size": world.world_size}))
"""


@pytest.mark.parametrize(
    "env, world_info, size",
    [(SLURM_STEP, "", 4), ({}, WORLD_INFO, 5)],
    ids=["slurm", "explicit"],
)
def test_detect_world_imports_nothing_heavy(env: Dict[str, str], world_info: str,
                                            size: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, json.dumps(env), world_info],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    report = json.loads(result.stdout)
    assert report["size"] == size
    assert report["heavy"] == []


def test_import_hpclaunch_alone_imports_no_submodule() -> None:
    code = "import sys, hpclaunch; print(sorted(m for m in sys.modules if m[:9] == 'hpclaunch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "['hpclaunch']"
