"""Recorded scheduler environments (tests/fixtures/schedulers/) and the worlds they must give.

Each fixture holds a job's environment as the scheduler's documentation or the operator's
source says it is set (its ``source`` says which; no PBS, LSF or Kubernetes can run here),
the files it names (``@NODEFILE@`` / ``@HOSTFILE@`` become paths), the host the task runs
on and the recorded machine whose GPUs the driver lists (tests/fixtures/topology/, or none).
The expected worlds below are worked out by hand from each job request; derived master
ports are 15000 + (job number x 16 + array index) mod 16384.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

from hpclaunch.machine import ROOT_VAR

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SCHEDULERS = FIXTURES / "schedulers"
MACHINES = FIXTURES / "topology"


class Job(NamedTuple):
    name: str
    hostname: str
    env: Dict[str, str]
    data: Dict[str, Any]


def load_job(name: str, tmp: Path) -> Job:
    """The fixture's environment with its files written under ``tmp`` and the machine's root
    (an empty directory: no GPU) in ``HPCLAUNCH_TOPOLOGY_ROOT``."""
    data = json.loads((SCHEDULERS / f"{name}.json").read_text())
    paths = {}
    for marker, lines in data["files"].items():
        path = tmp / marker.strip("@").lower()
        path.write_text("".join(line + "\n" for line in lines))
        paths[marker] = str(path)
    env = {k: paths.get(v, v) for k, v in data["env"].items()}
    if data["machine"]:
        env[ROOT_VAR] = str(MACHINES / data["machine"])
    else:
        empty = tmp / "no-gpu-machine"
        empty.mkdir(exist_ok=True)
        env[ROOT_VAR] = str(empty)
    return Job(name, data["hostname"], env, data)


class Expected(NamedTuple):
    adapter: str
    node_rank: int
    world_info: Dict[str, List[int]]
    master_addr: str
    master_port: int
    run_id: str
    #: this node's global ranks
    ranks: List[int]
    #: the workers' CUDA_VISIBLE_DEVICES, None: not set
    gpus: Optional[str]


def _slots(n: int) -> List[int]:
    return list(range(n))


POLARIS = "hsn.cm.polaris.alcf.anl.gov"
EXPECTED: Dict[str, Expected] = {
    "pbs-openpbs-2node-gpu-pbsdsh": Expected(
        "pbs", 1, {"cn01.cluster.example": _slots(4), "cn02.cluster.example": _slots(4)},
        "cn01.cluster.example", 17336, "pbs-4242.pbs01", [4, 5, 6, 7], "0,1,2,3"),
    "pbs-openpbs-3node-cpu-mpiprocs4": Expected(
        "pbs", 1, {"node-a": _slots(4), "node-b": _slots(4), "node-c": _slots(4)},
        "node-a", 16232, "pbs-77.head", [4, 5, 6, 7], None),
    "pbs-pbspro-array-uneven": Expected(
        "pbs", 0, {"r1i0n3": [0, 1], "r1i0n4": [0, 1, 2]},
        "r1i0n3", 16975, "pbs-123[7].pbspro", [0, 1], None),
    "pbs-cray-pals-mpiexec": Expected(
        "pbs", 1, {f"x3004c0s7b0n0.{POLARIS}": _slots(4), f"x3004c0s7b1n0.{POLARIS}": _slots(4)},
        f"x3004c0s7b0n0.{POLARIS}", 25352, f"pbs-1234567.polaris-pbs-01.{POLARIS}",
        [4, 5, 6, 7], "0,1,2,3"),
    "lsf-summit-jsrun": Expected(
        "lsf", 1, {"a01n01": _slots(6), "a01n02": _slots(6)},
        "a01n01", 25352, "lsf-1234567", [6, 7, 8, 9, 10, 11], "0,1,2,3,4,5"),
    "lsf-mpirun-cpu": Expected(
        "lsf", 0, {"hostA": _slots(4), "hostB": _slots(4)},
        "hostA", 15480, "lsf-5150", [0, 1, 2, 3], None),
    "lsf-array-hostfile-blaunch": Expected(
        "lsf", 1, {"n1": [0, 1], "n2": [0, 1]},
        "n1", 29595, "lsf-8080[3]", [2, 3], None),
    "kubeflow-pytorchjob-v1-master": Expected(
        "kubeflow", 0, {"mnist-master-0": _slots(4), "node1": _slots(4), "node2": _slots(4)},
        "mnist-master-0", 23456, "kubeflow-mnist-master-0", [0, 1, 2, 3], None),
    "kubeflow-pytorchjob-v1-worker-auto": Expected(
        "kubeflow", 2,
        {"bert-master-0": _slots(8), "node1": _slots(8), "bert-worker-1": _slots(8),
         "node3": _slots(8)},
        "bert-master-0", 23456, "kubeflow-bert-master-0", list(range(16, 24)),
        "0,1,2,3,4,5,6,7"),
    "kubeflow-trainjob-v2": Expected(
        "kubeflow", 1,
        {"llama-trainer-node-0-0.llama": _slots(8), "llama-trainer-node-0-1": _slots(8)},
        "llama-trainer-node-0-0.llama", 29500, "kubeflow-llama-trainer-node-0-0.llama",
        list(range(8, 16)), "0,1,2,3,4,5,6,7"),
    "kubeflow-jobset-user-line": Expected(
        "kubeflow", 3,
        {"pytorch-workers-0-0.pytorch": [0], "node1": [0], "node2": [0],
         "pytorch-workers-0-3": [0]},
        "pytorch-workers-0-0.pytorch", 29500, "kubeflow-pytorch-workers-0-0.pytorch", [3], None),
}

#: Recorded launches that must be refused: fixture -> what the one error line names.
REFUSED: Dict[str, str] = {
    "pbs-mpiexec-two-per-host": "PALS_LOCAL_RANKID=1",
    "kubeflow-pytorchjob-v1-elastic": "hpclaunch-torchrun",
}
