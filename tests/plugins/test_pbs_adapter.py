"""The example PBS plug-in (examples/plugins/pbs) on recorded job environments.

Each ``recorded/*.json`` holds a job's environment, its ``PBS_NODEFILE`` lines and the host
the task runs on; the expected worlds below are worked out by hand from the job request.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from hpclaunch import AdapterError, WorldOptions

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "plugins" / "pbs"))

from hpclaunch_pbs import PBSAdapter, job_port  # noqa: E402

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str, tmp_path: Path) -> Tuple[Dict[str, str], PBSAdapter]:
    data = json.loads((RECORDED / f"{name}.json").read_text())
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(line + "\n" for line in data["nodefile"]))
    env = {k: v.replace("@NODEFILE@", str(nodefile)) for k, v in data["env"].items()}
    return env, PBSAdapter(hostname=lambda: data["hostname"])


def hosts(world: object) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(h.name, h.slots) for h in world.hosts]  # type: ignore[attr-defined]


def test_two_gpu_nodes_started_by_pbsdsh(tmp_path: Path) -> None:
    env, adapter = recorded("openpbs-2node-gpu", tmp_path)
    assert adapter.detect(env)
    world = adapter.world(env, WorldOptions())
    assert hosts(world) == [("cn01.cluster.example", (0, 1, 2, 3)),
                            ("cn02.cluster.example", (0, 1, 2, 3))]
    assert world.node_rank == 1  # "cn02" is the short name of the second host
    assert (world.master_addr, world.master_port) == ("cn01.cluster.example", 33742)
    assert world.run_id == "pbs-4242.pbs01"
    assert world.gpu_slots and list(world.global_ranks()) == [4, 5, 6, 7]


def test_cpu_job_takes_workers_per_node_from_mpiprocs(tmp_path: Path) -> None:
    env, adapter = recorded("openpbs-3node-cpu-mpiprocs4", tmp_path)
    world = adapter.world(env, WorldOptions())
    assert hosts(world) == [("node-a", (0, 1, 2, 3)), ("node-b", (0, 1, 2, 3)),
                            ("node-c", (0, 1, 2, 3))]
    assert world.node_rank == 1 and not world.gpu_slots
    assert world.master_port == 29577 and world.world_size == 12


def test_array_job_with_uneven_chunks(tmp_path: Path) -> None:
    env, adapter = recorded("pbspro-array-uneven", tmp_path)
    world = adapter.world(env, WorldOptions())
    assert hosts(world) == [("r1i0n3", (0, 1)), ("r1i0n4", (0, 1, 2))]
    assert world.node_rank == 0 and world.world_size == 5
    assert world.master_port == 29623  # from the array's job number, 123
    assert world.run_id == "pbs-123[7].pbspro"


def test_flags_override_the_job(tmp_path: Path) -> None:
    env, adapter = recorded("openpbs-2node-gpu", tmp_path)
    world = adapter.world(
        env, WorldOptions(nproc_per_node=2, master_addr="10.0.0.1", master_port=4000)
    )
    assert hosts(world) == [("cn01.cluster.example", (0, 1)), ("cn02.cluster.example", (0, 1))]
    assert (world.master_addr, world.master_port, world.gpu_slots) == ("10.0.0.1", 4000, True)
    more = adapter.world(env, WorldOptions(nproc_per_node=6))  # more workers than GPUs
    assert more.this_host.slots == (0, 1, 2, 3, 4, 5) and not more.gpu_slots


def test_a_host_outside_the_job_is_refused(tmp_path: Path) -> None:
    env, _ = recorded("openpbs-2node-gpu", tmp_path)
    with pytest.raises(AdapterError, match="'login1' is not in PBS_NODEFILE"):
        PBSAdapter(hostname=lambda: "login1").world(env, WorldOptions())


def test_node_rank_must_agree(tmp_path: Path) -> None:
    env, adapter = recorded("openpbs-2node-gpu", tmp_path)
    with pytest.raises(AdapterError, match="--node_rank 0 contradicts"):
        adapter.world(env, WorldOptions(node_rank=0))


def test_missing_nodefile_is_one_line(tmp_path: Path) -> None:
    env, adapter = recorded("openpbs-2node-gpu", tmp_path)
    env["PBS_NODEFILE"] = str(tmp_path / "gone")
    with pytest.raises(AdapterError, match="cannot read PBS_NODEFILE"):
        adapter.world(env, WorldOptions())


@pytest.mark.parametrize(
    "env",
    [{}, {"PBS_JOBID": "1.x"}, {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"},
     {"PBS_JOBID": " ", "PBS_NODEFILE": "/x"}],
)
def test_no_detection_outside_a_pbs_job(env: Dict[str, str]) -> None:
    assert not PBSAdapter().detect(env)


def test_job_port_stays_in_range() -> None:
    assert {job_port(j) for j in ("0.s", "9999.s", "123456789.s", "weird")} <= set(
        range(29500, 39500)
    )
