"""The PBS, LSF, Kubeflow and torchrun adapters on recorded job environments
(tests/fixtures/schedulers/, see tests/unit/recorded_jobs.py), and their refusals."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import pytest

from hpclaunch.adapters import DETECTION_ORDER, ENV_DETECTORS, WorldOptions, select
from hpclaunch.adapters.base import BaseAdapter
from hpclaunch.adapters.kubeflow import KubeflowAdapter
from hpclaunch.adapters.lsf import LSFAdapter, parse_mcpu_hosts
from hpclaunch.adapters.pbs import PBSAdapter
from hpclaunch.adapters.torchrun import TorchrunAdapter, parse_endpoint, worker_slots
from hpclaunch.errors import AdapterError
from hpclaunch.machine import ROOT_VAR
from hpclaunch.model.plan import Command, build_plan
from hpclaunch.model.world import World
from tests.unit.recorded_jobs import EXPECTED, MACHINES, REFUSED, load_job

ADAPTERS = {"pbs": PBSAdapter, "lsf": LSFAdapter, "kubeflow": KubeflowAdapter}


def adapter_for(name: str, hostname: str) -> BaseAdapter:
    adapter: BaseAdapter = ADAPTERS[name](hostname=lambda: hostname)
    return adapter


def gpus_of(world: World) -> str | None:
    plan = build_plan("test", world, Command("/bin/true", mode="exec", pass_local_rank=False))
    return plan.workers[0].env_dict().get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_job_gives_its_world(name: str, tmp_path: Path) -> None:
    job, expected = load_job(name, tmp_path), EXPECTED[name]
    assert select(job.env, WorldOptions()).name == expected.adapter  # auto-detected
    world = adapter_for(expected.adapter, job.hostname).world(job.env, WorldOptions())
    assert world.node_rank == expected.node_rank
    assert world.world_info() == expected.world_info
    assert (world.master_addr, world.master_port) == (expected.master_addr, expected.master_port)
    assert world.run_id == expected.run_id
    assert list(world.global_ranks()) == expected.ranks
    assert gpus_of(world) == expected.gpus


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_recorded_wrong_launch_is_refused(name: str, tmp_path: Path) -> None:
    job = load_job(name, tmp_path)
    adapter = select(job.env, WorldOptions())
    with pytest.raises(AdapterError, match=REFUSED[name]):
        adapter_for(adapter.name, job.hostname).world(job.env, WorldOptions())


@pytest.mark.parametrize(
    "adapter, env, missing",
    [
        (PBSAdapter, {}, "PBS_JOBID is not set"),
        (PBSAdapter, {"PBS_JOBID": "1.s"}, "PBS_NODEFILE is not set"),
        (PBSAdapter, {"PBS_JOBID": "1.s", "PBS_NODEFILE": "/nonexistent/nodefile"},
         "cannot read PBS_NODEFILE '/nonexistent/nodefile'"),
        (LSFAdapter, {}, "LSB_JOBID is not set"),
        (LSFAdapter, {"LSB_JOBID": "7"}, "LSB_MCPU_HOSTS is not set"),
        (LSFAdapter, {"LSB_JOBID": "7", "LSB_MCPU_HOSTS": "a 4 b"}, "LSB_MCPU_HOSTS='a 4 b'"),
        (LSFAdapter, {"LSB_JOBID": "7", "LSB_DJOB_HOSTFILE": "/nonexistent/h"},
         "cannot read LSB_DJOB_HOSTFILE"),
        (KubeflowAdapter, {"PET_NNODES": "2"}, "PET_NODE_RANK is not set"),
        (KubeflowAdapter, {"PET_NNODES": "2", "PET_NODE_RANK": "1"},
         "PET_MASTER_ADDR is not set"),
        (KubeflowAdapter, {"PET_NNODES": "two", "PET_NODE_RANK": "1", "MASTER_ADDR": "m"},
         "PET_NNODES 'two'"),
    ],
)
def test_an_incomplete_environment_is_one_line_naming_the_variable(
    adapter: type, env: Dict[str, str], missing: str
) -> None:
    with pytest.raises(AdapterError, match=missing.replace("[", r"\[")) as caught:
        adapter(hostname=lambda: "h").world(env, WorldOptions())
    assert "\n" not in str(caught.value)


def test_the_v1_trap_is_checked_not_trusted(tmp_path: Path) -> None:
    """RANK is the pod's index and WORLD_SIZE the operator's process count: if they are not
    what the operator computes, the variables are someone else's."""
    job = load_job("kubeflow-pytorchjob-v1-master", tmp_path)
    adapter = KubeflowAdapter(hostname=lambda: job.hostname)
    with pytest.raises(AdapterError, match="WORLD_SIZE=3 but PET_NNODES=3"):
        adapter.world({**job.env, "WORLD_SIZE": "3"}, WorldOptions())
    with pytest.raises(AdapterError, match="RANK=1 but PET_NODE_RANK=0"):
        adapter.world({**job.env, "RANK": "1"}, WorldOptions())
    with pytest.raises(AdapterError, match="--node_rank 1 contradicts PET_NODE_RANK=0"):
        adapter.world(job.env, WorldOptions(node_rank=1))
    # --nproc_per_node is the user's word over the job spec's: no WORLD_SIZE check then.
    mine = adapter.world(job.env, WorldOptions(nproc_per_node=2))
    assert mine.world_size == 6 and mine.this_host.slots == (0, 1)


def test_pbs_host_known_by_another_name_takes_the_launchers_index(tmp_path: Path) -> None:
    job = load_job("pbs-cray-pals-mpiexec", tmp_path)
    adapter = PBSAdapter(hostname=lambda: "x3004c0s7b1n0-ib")  # not in the nodefile
    world = adapter.world(job.env, WorldOptions())
    assert world.node_rank == 1 and adapter.notes() == (
        "this host (x3004c0s7b1n0-ib) is not named in PBS_NODEFILE: node rank 1 from "
        "PALS_NODEID",
    )
    without = {k: v for k, v in job.env.items() if k not in ("PALS_NODEID", "PBS_NODENUM")}
    with pytest.raises(AdapterError, match="'x3004c0s7b1n0-ib' is not in PBS_NODEFILE"):
        adapter.world(without, WorldOptions())


def test_a_launcher_for_a_subset_of_the_hosts_is_refused(tmp_path: Path) -> None:
    job = load_job("pbs-cray-pals-mpiexec", tmp_path)
    adapter = PBSAdapter(hostname=lambda: job.hostname)
    with pytest.raises(AdapterError, match="3 hpclaunch were started .PMI_SIZE. for the 2 host"):
        adapter.world({**job.env, "PMI_SIZE": "3"}, WorldOptions())
    with pytest.raises(AdapterError, match="PMI_LOCAL_SIZE=2"):
        adapter.world({**job.env, "PMI_LOCAL_SIZE": "2"}, WorldOptions())


def test_flags_override_the_job(tmp_path: Path) -> None:
    job = load_job("pbs-openpbs-2node-gpu-pbsdsh", tmp_path)
    adapter = PBSAdapter(hostname=lambda: job.hostname)
    world = adapter.world(
        job.env, WorldOptions(nproc_per_node=2, master_addr="10.0.0.1", master_port=4000)
    )
    assert world.world_info() == {"cn01.cluster.example": [0, 1], "cn02.cluster.example": [0, 1]}
    assert (world.master_addr, world.master_port, world.gpu_slots) == ("10.0.0.1", 4000, True)
    more = adapter.world(job.env, WorldOptions(nproc_per_node=6))  # more workers than GPUs
    assert more.this_host.slots == (0, 1, 2, 3, 4, 5) and not more.gpu_slots
    with pytest.raises(AdapterError, match="--node_rank 0 contradicts"):
        adapter.world(job.env, WorldOptions(node_rank=0))


def test_jsrun_launch_node_runs_no_workers(tmp_path: Path) -> None:
    job = load_job("lsf-summit-jsrun", tmp_path)
    adapter = LSFAdapter(hostname=lambda: job.hostname)
    adapter.world(job.env, WorldOptions())
    assert adapter.notes() == ("jsrun system: launch node batch3 runs no workers",)
    only_launch = {**job.env, "LSB_MCPU_HOSTS": "batch3 1"}
    with pytest.raises(AdapterError, match="lists only the launch node batch3"):
        adapter.world(only_launch, WorldOptions())
    # Without jsrun the same list is an ordinary job whose first host works too.
    plain = {k: v for k, v in job.env.items() if not k.startswith(("JSM_", "OMPI_", "PMIX_"))}
    world = LSFAdapter(hostname=lambda: "batch3").world(plain, WorldOptions(nproc_per_node=1))
    assert world.node_rank == 0 and world.num_nodes == 3


def test_lsf_workers_do_not_inherit_the_launchers_jsrun_task(tmp_path: Path) -> None:
    job = load_job("lsf-summit-jsrun", tmp_path)
    inherited = LSFAdapter().worker_environment(job.env)
    assert not [k for k in inherited if k.startswith(("JSM_NAMESPACE_", "OMPI_COMM_WORLD_"))]
    assert inherited["LSB_JOBID"] == "1234567"


def test_mcpu_hosts_sums_a_repeated_host() -> None:
    assert parse_mcpu_hosts("a 2 b 4 a 2") == {"a": 4, "b": 4}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"PBS_JOBID": "1.s", "PBS_NODEFILE": "/x", "PMI_SIZE": "2", "PMI_RANK": "0"}, "pbs"),
        ({"LSB_JOBID": "1", "LSB_MCPU_HOSTS": "a 1", "OMPI_COMM_WORLD_SIZE": "1"}, "lsf"),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "PBS_JOBID": "1.s", "PBS_NODEFILE": "/x"},
         "slurm"),
        ({"PET_NNODES": "2", "OMPI_COMM_WORLD_SIZE": "2"}, "mpi"),
        ({"PET_NNODES": "2"}, "kubeflow"),
        ({"PBS_JOBID": "1.s"}, "local"),  # no nodefile: not inside the job's hosts
        ({"LSB_JOBID": "1"}, "local"),
        ({"PET_NPROC_PER_NODE": "4"}, "local"),  # torchrun settings alone are not a pod
    ],
)
def test_detection_order(env: Dict[str, str], expected: str) -> None:
    assert select(env, WorldOptions()).name == expected


def test_detection_is_variables_only() -> None:
    """Every auto-detected built-in detects by variables, so a plain launch imports none of
    them (tests/integration/test_launch_imports.py holds it)."""
    assert set(ENV_DETECTORS) == set(DETECTION_ORDER) == {"slurm", "pbs", "lsf", "mpi",
                                                          "kubeflow"}
    assert not TorchrunAdapter().detect({"PET_NNODES": "2"})  # chosen, never guessed


def test_torchrun_adapter_defaults_are_torchruns(tmp_path: Path) -> None:
    env = {ROOT_VAR: str(tmp_path)}
    world = TorchrunAdapter(hostname=lambda: "h").world(env, WorldOptions())
    assert world.world_info() == {"h": [0]} and world.run_id == "none"
    assert (world.master_addr, world.master_port) == ("127.0.0.1", 29500)
    endpoint = {**env, "PET_NNODES": "2", "PET_NODE_RANK": "1",
                "PET_RDZV_ENDPOINT": "[fe80::1]:4000", "PET_NPROC_PER_NODE": "3"}
    world = TorchrunAdapter(hostname=lambda: "h").world(endpoint, WorldOptions())
    assert (world.master_addr, world.master_port) == ("fe80::1", 4000)
    assert world.world_info() == {"fe80::1": [0, 1, 2], "h": [0, 1, 2]}


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"PET_NNODES": "1:4"}, "elastic membership"),
        ({"PET_RDZV_BACKEND": "c10d"}, "rendezvous form"),
        ({"PET_STANDALONE": "1"}, "standalone"),
        ({"PET_NNODES": "2", "PET_NODE_RANK": "2"}, "node rank 2 is outside the 2 node"),
        ({"PET_MASTER_PORT": "http"}, "PET_MASTER_PORT='http'"),
        ({"PET_NPROC_PER_NODE": "many"}, "PET_NPROC_PER_NODE 'many'"),
    ],
)
def test_torchrun_adapter_refusals(env: Dict[str, str], refused: str) -> None:
    with pytest.raises(AdapterError, match=refused):
        TorchrunAdapter(hostname=lambda: "h").world(env, WorldOptions())


def test_nproc_words(tmp_path: Path) -> None:
    none = {ROOT_VAR: str(tmp_path)}
    eight = {ROOT_VAR: str(MACHINES / "dgx-h100")}
    cpus = len(os.sched_getaffinity(0))
    assert worker_slots("auto", eight) == (tuple(range(8)), True)
    assert worker_slots("gpu", eight) == (tuple(range(8)), True)
    assert worker_slots("auto", none) == (tuple(range(cpus)), False)
    assert worker_slots("cpu", eight) == (tuple(range(cpus)), False)
    assert worker_slots("2", eight) == ((0, 1), True)
    with pytest.raises(AdapterError, match="no GPU is visible"):
        worker_slots("gpu", none)
    with pytest.raises(AdapterError, match="at least one worker"):
        worker_slots("0", none)


@pytest.mark.parametrize(
    "text, expected",
    [("h:1", ("h", 1)), ("h", ("h", 29400)), ("[::1]:5", ("::1", 5)), ("[::1]", ("::1", 29400))],
)
def test_endpoints(text: str, expected: tuple) -> None:  # type: ignore[type-arg]
    assert parse_endpoint(text, 29400, "--rdzv-endpoint") == expected


@pytest.mark.parametrize("text", ["", ":5", "h:x", "[::1", "h:70000"])
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(AdapterError, match="--rdzv-endpoint"):
        parse_endpoint(text, 29400, "--rdzv-endpoint")
