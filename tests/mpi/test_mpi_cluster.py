"""hpclaunch under real mpirun (OpenMPI 5) and mpiexec (MPICH), across emulated hosts.

Each test runs once per MPI implementation. Hosts are network namespaces with their own
hostname and address (emulate.py), so a master_addr of 127.0.0.1 or a node order taken
from anything but MPI ranks would show. Synchronisation is by FIFO: workers announce
themselves, a worker fails only when the test writes to a second FIFO.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.conftest import ALLREDUCE, WORKER, Fifo, wait_gone
from tests.mpi.conftest import FAILER, MPI, SINGLETON, stop
from tests.mpi.singleton import is_identity

pytestmark = pytest.mark.timeout(180)


def dry_run(mpi: MPI, tmp_path: Path, hosts: List[str]) -> List[Dict[str, Any]]:
    hostfile = mpi.hostfile(tmp_path, hosts)
    args = ["--dry-run", "--nproc_per_node", "2", WORKER, "--hang"]
    done = subprocess.run(
        mpi.command(hostfile, args, hosts=len(hosts)),
        capture_output=True, text=True, timeout=60, env=mpi.env(),
    )
    assert done.returncode == 0, done.stderr
    plans = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(plans) == len(hosts), done.stdout
    return sorted(plans, key=lambda plan: plan["node_rank"])


@pytest.mark.parametrize("count", [2, 3])
def test_dry_run_every_node_agrees(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str], count: int
) -> None:
    hosts = emulated_hosts[:count]
    plans = dry_run(mpi, tmp_path, hosts)
    first = plans[0]
    expected_info = {host: [0, 1] for host in hosts}  # node order = MPI rank order
    for node_rank, plan in enumerate(plans):
        assert plan["adapter"] == "mpi"
        assert plan["node_rank"] == node_rank
        assert plan["host"] == hosts[node_rank]
        assert plan["world_info"] == expected_info
        assert plan["world_size"] == 2 * count
        # rank 0's own address on its own network: not loopback, reachable from the others
        assert plan["master_addr"] == mpi.network.address(1)
        for key in ("master_port", "run_id"):
            assert plan[key] == first[key], key
        assert [w["rank"] for w in plan["workers"]] == [2 * node_rank, 2 * node_rank + 1]
        for worker in plan["workers"]:
            assert worker["env"]["CROSS_RANK"] == str(node_rank)
            assert worker["env"]["TORCHELASTIC_RUN_ID"] == first["run_id"]
    assert mpi.leftovers() == []


def test_gloo_all_reduce_two_hosts_two_workers(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str], torch_available: None
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hostfile = mpi.hostfile(tmp_path, emulated_hosts[:2])
    args = ["--nproc_per_node", "2", ALLREDUCE, "--backend", "gloo", "--out", str(out)]
    done = subprocess.run(
        mpi.command(hostfile, args), capture_output=True, text=True, timeout=120, env=mpi.env()
    )
    assert done.returncode == 0, done.stderr
    records = {r["rank"]: r for r in (json.loads(p.read_text()) for p in out.glob("rank*.json"))}
    assert sorted(records) == [0, 1, 2, 3]
    for rank, record in records.items():
        assert record["world_size"] == 4
        assert record["sum"] == record["expected"] == 10
        assert record["host"] == emulated_hosts[rank // 2]
        assert record["local_rank_arg"] == rank % 2
        assert record["env"]["MASTER_ADDR"] == mpi.network.address(1)
    assert mpi.leftovers() == []


def test_elastic_all_reduce_under_mpi(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str], torch_available: None
) -> None:
    """The MPI-agreed master and run id also serve torch's c10d rendezvous (elastic mode)."""
    out = tmp_path / "out"
    out.mkdir()
    hostfile = mpi.hostfile(tmp_path, emulated_hosts[:2])
    args = ["--enable_elastic_training", "--nproc_per_node", "2", ALLREDUCE,
            "--backend", "gloo", "--out", str(out)]
    done = subprocess.run(
        mpi.command(hostfile, args), capture_output=True, text=True, timeout=120, env=mpi.env()
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(p.read_text()) for p in out.glob("rank*.json")]
    assert sorted(r["rank"] for r in records) == [0, 1, 2, 3]
    assert all(r["sum"] == r["expected"] == 10 for r in records)
    assert len({r["env"]["TORCHELASTIC_RUN_ID"] for r in records}) == 1
    assert mpi.leftovers() == []


def start_failing_job(
    mpi: MPI, tmp_path: Path, hosts: List[str], fail_rank: int
) -> tuple[subprocess.Popen[str], Fifo, Path]:
    ready = Fifo(tmp_path / "ready.fifo")
    go = tmp_path / "go.fifo"
    os.mkfifo(go)
    hostfile = mpi.hostfile(tmp_path, hosts)
    args = ["--nproc_per_node", "2", "--kill_timeout", "600", FAILER,
            "--ready", ready.path, "--go", str(go), "--fail-rank", str(fail_rank)]
    process = subprocess.Popen(
        mpi.command(hostfile, args, hosts=len(hosts)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True, env=mpi.env(),
    )
    return process, ready, go


@pytest.mark.parametrize("hosts,fail_rank", [(2, 0), (2, 3), (3, 3)])
def test_failing_worker_ends_every_node(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str], hosts: int, fail_rank: int
) -> None:
    """A worker on one node exits 3 (the first node, the last, or the middle one of three):
    every node ends at once (OpenMPI ends the job on a non-zero exit, MPICH on the failing
    launcher's MPI_Abort).

    --kill_timeout is 600 s, so a launcher that waited for it would trip the 120 s hang guard;
    how fast the failure spreads is measured in benchmarks/, not asserted here.
    """
    process, ready, go = start_failing_job(mpi, tmp_path, emulated_hosts[:hosts], fail_rank)
    try:
        lines = ready.expect(2 * hosts, timeout=60)
        workers = [int(line.split()[2]) for line in lines]
        launchers = {int(line.split()[3]) for line in lines}
        assert len(launchers) == hosts
        with open(go, "wb") as handle:
            handle.write(b"x")
        _, stderr = process.communicate(timeout=120)  # a hang guard, not a time target
    finally:
        stop(process)
        ready.close()
    assert process.returncode == 3, stderr
    assert f"rank {fail_rank}" in stderr
    assert mpi.leftovers() == []
    # Known PIDs too: a process in the middle of exiting shows an empty environ, no token.
    assert wait_gone(workers + sorted(launchers)) == []


def test_sigterm_to_mpirun_ends_every_worker(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str]
) -> None:
    process, ready, _ = start_failing_job(mpi, tmp_path, emulated_hosts[:2], fail_rank=-1)
    try:
        ready.expect(4, timeout=60)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)  # a hang guard, not a time target
    finally:
        stop(process)
        ready.close()
    assert process.returncode != 0, stderr
    assert mpi.leftovers() == []


def test_two_launchers_on_one_host_is_an_error(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str]
) -> None:
    ready = Fifo(tmp_path / "ready.fifo")
    hostfile = mpi.hostfile(tmp_path, emulated_hosts[:2])
    args = ["--nproc_per_node", "1", FAILER, "--ready", ready.path]
    try:
        done = subprocess.run(
            mpi.command(hostfile, args, per_host=2), capture_output=True, text=True,
            timeout=60, env=mpi.env(),
        )
        assert ready.lines == [] and not _readable(ready)
    finally:
        ready.close()
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("hpclaunch: error:")]
    assert len(errors) == 4, done.stderr  # every launcher says the same, none hangs
    assert len(set(errors)) == 1
    assert "-npernode 1" in errors[0] and "-ppn 1" in errors[0]
    assert "Traceback" not in done.stderr
    assert mpi.leftovers() == []


def _readable(fifo: Fifo) -> bool:
    """Whether any worker wrote to the FIFO (it must not have: nothing may be spawned)."""
    try:
        return bool(os.read(fifo.fd, 1))
    except BlockingIOError:
        return False


def run_singletons(mpi: MPI, tmp_path: Path, hosts: List[str], *extra: str) -> List[Any]:
    out = tmp_path / "out"
    out.mkdir()
    hostfile = mpi.hostfile(tmp_path, hosts)
    args = ["--nproc_per_node", "2", SINGLETON, "--out", str(out), *extra]
    done = subprocess.run(
        mpi.command(hostfile, args), capture_output=True, text=True, timeout=60, env=mpi.env()
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert len(records) == 4
    return records


#: What each implementation documents as a rank's identity; the launcher must have had these.
DOCUMENTED_RANK_VARS = {
    "openmpi": {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMIX_NAMESPACE"},
    "mpich": {"PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS", "MPI_LOCALRANKID"},
}


def test_workers_do_not_inherit_the_launcher_s_mpi_identity(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str]
) -> None:
    """The launcher was a rank (its own environ says so); its workers carry none of that.

    The identity list is the implementations' documentation (singleton.is_identity), not
    hpclaunch's; tunables (OMPI_MCA_*, PMIX_MCA_*, ...) may pass.
    """
    records = run_singletons(mpi, tmp_path, emulated_hosts[:2])
    for record in records:
        assert DOCUMENTED_RANK_VARS[mpi.name] <= set(record["launcher_vars"]), record
        leaked = [name for name in record["worker_vars"] if is_identity(name)]
        assert leaked == [], record
    assert mpi.leftovers() == []


def test_workers_can_start_their_own_mpi(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str]
) -> None:
    """With the launcher's identity gone, a worker's own MPI_Init is a singleton."""
    for record in run_singletons(mpi, tmp_path, emulated_hosts[:2]):
        assert (record.get("mpi_size"), record.get("mpi_rank")) == (1, 0), record
    assert mpi.leftovers() == []


def test_a_flag_one_node_rejects_is_every_node_s_error(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str]
) -> None:
    """--node_rank 1 contradicts MPI rank 0 only: still every launcher exits 2, none hangs."""
    hostfile = mpi.hostfile(tmp_path, emulated_hosts[:2])
    args = ["--node_rank", "1", "--dry-run", WORKER]
    done = subprocess.run(
        mpi.command(hostfile, args), capture_output=True, text=True, timeout=60, env=mpi.env()
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("hpclaunch: error:")]
    assert len(errors) == 2 and len(set(errors)) == 1, done.stderr
    assert "MPI rank 0" in errors[0] and "drop --node_rank" in errors[0]
    assert mpi.leftovers() == []


def test_a_launcher_killed_outright_ends_every_node(
    mpi: MPI, tmp_path: Path, emulated_hosts: List[str]
) -> None:
    """An OOM-killed launcher is an MPI rank dying: the runtime ends the other node too."""
    process, ready, _ = start_failing_job(mpi, tmp_path, emulated_hosts[:2], fail_rank=-1)
    try:
        lines = ready.expect(4, timeout=60)
        launcher_of_rank_3 = int(next(line for line in lines if line.split()[1] == "3").split()[3])
        os.kill(launcher_of_rank_3, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)  # a hang guard, not a time target
    finally:
        stop(process)
        ready.close()
    assert process.returncode != 0, stderr
    assert mpi.leftovers() == []
