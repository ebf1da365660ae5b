"""The example Grid Engine plug-in (examples/plugins/sge) on recorded job environments.

Each ``recorded/*.json`` holds a job's environment, its ``PE_HOSTFILE`` lines and the host
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
sys.path.insert(0, str(ROOT / "examples" / "plugins" / "sge"))

from hpclaunch_sge import SGEAdapter, job_port  # noqa: E402

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str, tmp_path: Path) -> Tuple[Dict[str, str], SGEAdapter]:
    data = json.loads((RECORDED / f"{name}.json").read_text())
    hostfile = tmp_path / "pe_hostfile"
    hostfile.write_text("".join(line + "\n" for line in data["hostfile"]))
    env = {k: v.replace("@HOSTFILE@", str(hostfile)) for k, v in data["env"].items()}
    return env, SGEAdapter(hostname=lambda: data["hostname"])


def hosts(world: object) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(h.name, h.slots) for h in world.hosts]  # type: ignore[attr-defined]


def test_two_gpu_hosts_started_by_mpirun(tmp_path: Path) -> None:
    env, adapter = recorded("sge-2host-gpu", tmp_path)
    assert adapter.detect(env)
    world = adapter.world(env, WorldOptions())
    assert hosts(world) == [("gn01.hpc.example", (0, 1, 2, 3)),
                            ("gn02.hpc.example", (0, 1, 2, 3))]
    assert world.node_rank == 1  # "gn02" is the short name of the second host
    assert (world.master_addr, world.master_port) == ("gn01.hpc.example", 33742)
    assert world.run_id == "sge-4242"
    assert world.gpu_slots and list(world.global_ranks()) == [4, 5, 6, 7]


def test_a_host_on_two_lines_sums_its_slots(tmp_path: Path) -> None:
    env, adapter = recorded("sge-3host-cpu-two-queues", tmp_path)
    world = adapter.world(env, WorldOptions())
    assert hosts(world) == [("node-a", (0, 1, 2, 3)), ("node-b", (0, 1, 2, 3)),
                            ("node-c", (0, 1, 2, 3))]
    assert world.node_rank == 1 and not world.gpu_slots
    assert world.master_port == 29577 and world.world_size == 12


def test_array_task_with_uneven_hosts(tmp_path: Path) -> None:
    env, adapter = recorded("sge-array-uneven", tmp_path)
    world = adapter.world(env, WorldOptions())
    assert hosts(world) == [("r1i0n3", (0, 1)), ("r1i0n4", (0, 1, 2))]
    assert world.node_rank == 0 and world.world_size == 5
    assert world.master_port == 29623
    assert world.run_id == "sge-123.7"


def test_flags_override_the_job(tmp_path: Path) -> None:
    env, adapter = recorded("sge-2host-gpu", tmp_path)
    world = adapter.world(
        env, WorldOptions(nproc_per_node=2, master_addr="10.0.0.1", master_port=4000)
    )
    assert hosts(world) == [("gn01.hpc.example", (0, 1)), ("gn02.hpc.example", (0, 1))]
    assert (world.master_addr, world.master_port, world.gpu_slots) == ("10.0.0.1", 4000, True)
    more = adapter.world(env, WorldOptions(nproc_per_node=6))  # more workers than GPUs
    assert more.this_host.slots == (0, 1, 2, 3, 4, 5) and not more.gpu_slots


def test_a_host_outside_the_job_is_refused(tmp_path: Path) -> None:
    env, _ = recorded("sge-2host-gpu", tmp_path)
    with pytest.raises(AdapterError, match="'login1' is not in PE_HOSTFILE"):
        SGEAdapter(hostname=lambda: "login1").world(env, WorldOptions())


def test_node_rank_must_agree(tmp_path: Path) -> None:
    env, adapter = recorded("sge-2host-gpu", tmp_path)
    with pytest.raises(AdapterError, match="--node_rank 0 contradicts"):
        adapter.world(env, WorldOptions(node_rank=0))


def test_missing_or_garbled_hostfile_is_one_line(tmp_path: Path) -> None:
    env, adapter = recorded("sge-2host-gpu", tmp_path)
    with pytest.raises(AdapterError, match="cannot read PE_HOSTFILE"):
        adapter.world({**env, "PE_HOSTFILE": str(tmp_path / "gone")}, WorldOptions())
    garbled = tmp_path / "garbled"
    garbled.write_text("gn01 four all.q@gn01 UNDEFINED\n")
    with pytest.raises(AdapterError, match="expected 'host slots queue processors'"):
        adapter.world({**env, "PE_HOSTFILE": str(garbled)}, WorldOptions())


@pytest.mark.parametrize(
    "env",
    [{}, {"JOB_ID": "1"}, {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"},
     {"JOB_ID": " ", "PE_HOSTFILE": "/x"}],
)
def test_no_detection_outside_a_grid_engine_job(env: Dict[str, str]) -> None:
    assert not SGEAdapter().detect(env)


def test_job_port_stays_in_range() -> None:
    assert {job_port(j) for j in ("0", "9999", "123456789", "weird")} <= set(range(29500, 39500))
