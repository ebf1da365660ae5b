"""The Slurm adapter over plain env dicts: no cluster, no mocks, no os.environ.

The base environments are what Slurm 22.05 really exported on the test cluster
(tests/slurm/), trimmed to the variables that matter; the odd cases (stale job-level
variables inside steps) are measured facts too, noted where used.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.adapters import select
from hpclaunch.adapters.base import PORT_BASE, PORT_SPAN, WorldOptions, derive_master_port
from hpclaunch.adapters.slurm import SlurmAdapter
from hpclaunch.errors import AdapterError, UsageError
from hpclaunch.model.world import World


def no_gpus(env: Mapping[str, str]) -> Tuple[Tuple[int, ...], bool]:
    return (), True


def four_unmanaged_gpus(env: Mapping[str, str]) -> Tuple[Tuple[int, ...], bool]:
    return (0, 1, 2, 3), True


ADAPTER = SlurmAdapter(gpu_probe=no_gpus)


def step_env(
    node_id: int = 0, nodes: str = "hlnode[1-2]", **extra: Optional[str]
) -> Dict[str, str]:
    """``srun -N2 --ntasks-per-node=1 --gpus-per-node=2`` as measured, on node ``node_id``."""
    names = ["hlnode1", "hlnode2"]
    env = {
        "SLURM_JOB_ID": "41",
        "SLURM_JOBID": "41",
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_PROCID": str(node_id),
        "SLURM_NODEID": str(node_id),
        "SLURM_LOCALID": "0",
        "SLURMD_NODENAME": names[node_id] if nodes == "hlnode[1-2]" else "",
        "SLURM_STEP_NODELIST": nodes,
        "SLURM_JOB_NODELIST": nodes,
        "SLURM_NODELIST": nodes,
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
        "SLURM_TASKS_PER_NODE": "1(x2)",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_CPUS_PER_NODE": "1(x2)",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "GPU_DEVICE_ORDINAL": "0,1",
        "SLURM_STEP_GPUS": "0,1",
        "SLURM_GPUS_ON_NODE": "2",
    }
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return {k: v for k, v in env.items() if v != ""}


def world(env: Mapping[str, str], **options: object) -> World:
    return ADAPTER.world(env, WorldOptions(**options))  # type: ignore[arg-type]


def shape(w: World) -> Tuple[object, ...]:
    """What every node must agree on."""
    return (
        [h.name for h in w.hosts],
        [len(h.slots) for h in w.hosts],
        w.master_addr,
        w.master_port,
        w.run_id,
        w.world_size,
        w.gpu_slots,
    )


# -- detection ----------------------------------------------------------------------------


def test_detects_a_step_and_a_batch_shell_but_not_a_plain_shell() -> None:
    assert ADAPTER.detect(step_env())
    assert ADAPTER.detect({"SLURM_JOB_ID": "41", "SLURM_PROCID": "0"})  # sbatch shell
    assert not ADAPTER.detect({})
    assert not ADAPTER.detect({"SLURM_JOB_ID": ""})
    assert not ADAPTER.detect({"SLURM_CONF": "/etc/slurm/slurm.conf"})


def test_auto_selection_picks_slurm_inside_a_step() -> None:
    adapter = select(step_env(), WorldOptions())
    assert adapter.name == "slurm"


# -- the world of a step ------------------------------------------------------------------


def test_two_node_step_as_measured() -> None:
    first, second = world(step_env(0)), world(step_env(1))
    assert shape(first) == shape(second)
    assert (first.node_rank, second.node_rank) == (0, 1)
    assert first.world_info() == {"hlnode1": [0, 1], "hlnode2": [0, 1]}
    assert first.master_addr == "hlnode1"
    assert first.run_id == "41.0"
    assert first.gpu_slots
    assert PORT_BASE <= first.master_port < PORT_BASE + PORT_SPAN


def test_this_nodes_real_gpu_ids_others_by_count() -> None:
    """Slurm tells a node only its own GPU ids; the others' never leave their node."""
    w = world(step_env(1, CUDA_VISIBLE_DEVICES="2,3", SLURM_STEP_GPUS="2,3"))
    assert w.world_info() == {"hlnode1": [0, 1], "hlnode2": [2, 3]}
    assert list(w.this_host.slots) == [2, 3]


def test_cuda_visible_devices_wins_over_slurm_step_gpus() -> None:
    """Under device cgroups CUDA sees relative ids while SLURM_STEP_GPUS keeps absolute ones."""
    w = world(step_env(0, CUDA_VISIBLE_DEVICES="0,1", SLURM_STEP_GPUS="4,5"))
    assert list(w.this_host.slots) == [0, 1]


def test_slurm_step_gpus_used_when_cuda_visible_devices_is_unset() -> None:
    w = world(
        step_env(0, CUDA_VISIBLE_DEVICES=None, GPU_DEVICE_ORDINAL=None, SLURM_STEP_GPUS="4,5")
    )
    assert list(w.this_host.slots) == [4, 5] and w.gpu_slots


def test_gpu_uuids_give_a_count_and_no_ids() -> None:
    env = step_env(0, CUDA_VISIBLE_DEVICES="GPU-aaa,GPU-bbb", GPU_DEVICE_ORDINAL=None)
    w = world(env)
    assert [len(h.slots) for h in w.hosts] == [2, 2]
    assert not w.gpu_slots  # workers inherit the UUIDs instead of wrong indices


def test_no_gpus_means_one_worker_per_node() -> None:
    env = step_env(0, CUDA_VISIBLE_DEVICES=None, GPU_DEVICE_ORDINAL=None, SLURM_STEP_GPUS=None)
    w = world(env)
    assert w.world_info() == {"hlnode1": [0], "hlnode2": [0]}
    assert not w.gpu_slots


def test_gpus_slurm_does_not_manage_are_found_by_the_probe() -> None:
    env = step_env(0, CUDA_VISIBLE_DEVICES=None, GPU_DEVICE_ORDINAL=None, SLURM_STEP_GPUS=None)
    w = SlurmAdapter(gpu_probe=four_unmanaged_gpus).world(env, WorldOptions())
    assert [len(h.slots) for h in w.hosts] == [4, 4]


@pytest.mark.parametrize(
    "nproc, slots, gpu_slots", [(1, [0], True), (2, [0, 1], True), (3, [0, 1, 2], False)]
)
def test_nproc_per_node_overrides(nproc: int, slots: List[int], gpu_slots: bool) -> None:
    w = world(step_env(0), nproc_per_node=nproc)
    assert list(w.this_host.slots) == slots
    assert [len(h.slots) for h in w.hosts] == [nproc, nproc]
    assert w.gpu_slots is gpu_slots


def test_nproc_per_node_zero_is_refused() -> None:
    with pytest.raises(AdapterError, match="nproc_per_node"):
        world(step_env(0), nproc_per_node=0)


def test_master_flags_override() -> None:
    w = world(step_env(1), master_addr="10.0.0.7", master_port=29600)
    assert (w.master_addr, w.master_port) == ("10.0.0.7", 29600)


def test_node_rank_flag_must_agree_with_slurm() -> None:
    assert world(step_env(1), node_rank=1).node_rank == 1
    with pytest.raises(AdapterError, match="SLURM_NODEID=1"):
        world(step_env(1), node_rank=0)


def test_old_step_variable_name_is_accepted() -> None:
    assert world(step_env(0, SLURM_STEP_ID=None, SLURM_STEPID="3")).run_id == "41.3"


# -- the master port ----------------------------------------------------------------------


@given(st.integers(1, 10**9), st.integers(0, 10**6))
def test_port_is_unprivileged_and_below_the_ephemeral_range(job: int, step: int) -> None:
    port = derive_master_port(job, step)
    assert 1024 < PORT_BASE <= port < PORT_BASE + PORT_SPAN <= 32768


@given(st.integers(1, 10**9))
def test_nearby_jobs_and_steps_get_different_ports(job: int) -> None:
    ports = {derive_master_port(job + j, s) for j in range(50) for s in range(8)}
    assert len(ports) == 400


# -- every node computes the same world ---------------------------------------------------


@st.composite
def steps(draw: st.DrawFn) -> Tuple[List[Dict[str, str]], List[str]]:
    count = draw(st.integers(1, 12))
    prefix = draw(st.sampled_from(["n", "gpu-", "r1n"]))
    start = draw(st.integers(0, 200))
    width = draw(st.integers(1, 4))
    nodelist = f"{prefix}[{str(start).zfill(width)}-{start + count - 1}]"
    hosts = [f"{prefix}{str(i).zfill(width)}" for i in range(start, start + count)]
    gpus = draw(st.integers(0, 8))
    job = draw(st.integers(1, 10**7))
    step = draw(st.integers(0, 100))
    envs = []
    for node_id, host in enumerate(hosts):
        ids = draw(st.permutations(range(16)))[:gpus]  # each node: its own ids
        env = {
            "SLURM_JOB_ID": str(job),
            "SLURM_STEP_ID": str(step),
            "SLURM_PROCID": str(node_id),
            "SLURM_NODEID": str(node_id),
            "SLURM_LOCALID": "0",
            "SLURMD_NODENAME": host,
            "SLURM_STEP_NODELIST": nodelist,
            "SLURM_STEP_NUM_NODES": str(count),
            "SLURM_STEP_TASKS_PER_NODE": f"1(x{count})" if count > 1 else "1",
        }
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
        envs.append(env)
    return envs, hosts


@given(steps(), st.one_of(st.none(), st.integers(1, 8)))
def test_all_nodes_agree_without_talking(
    drawn: Tuple[List[Dict[str, str]], List[str]], nproc: Optional[int]
) -> None:
    envs, hosts = drawn
    worlds = [world(env, nproc_per_node=nproc) for env in envs]
    assert len({repr(shape(w)) for w in worlds}) == 1
    for node_id, w in enumerate(worlds):
        assert w.node_rank == node_id
        assert [h.name for h in w.hosts] == hosts
        assert w.master_addr == hosts[0]
        assert w.global_ranks() == range(
            node_id * w.local_world_size, (node_id + 1) * w.local_world_size
        )
        if w.gpu_slots:
            cvd = envs[node_id]["CUDA_VISIBLE_DEVICES"]
            assert cvd.startswith(",".join(map(str, w.this_host.slots)))


# -- GPU counts Slurm does (not) tell -------------------------------------------------------


def test_uneven_total_gpu_request_is_refused() -> None:
    """sbatch -N2 --gpus=3: one node gets 2, the other 1 (measured); both must refuse."""
    first = step_env(0, SLURM_GPUS="3")
    second = step_env(1, SLURM_GPUS="3", CUDA_VISIBLE_DEVICES="0", SLURM_STEP_GPUS="0")
    for env in (first, second):
        with pytest.raises(AdapterError, match="--gpus-per-node"):
            world(env)
    assert world(first, nproc_per_node=1).world_size == 2


def test_even_total_gpu_request_is_accepted() -> None:
    assert world(step_env(0, SLURM_GPUS="gpu:4")).world_size == 4


def test_stale_job_gpus_per_node_does_not_override_the_step() -> None:
    """srun --gpus-per-node=1 inside sbatch --gpus-per-node=2 still shows SLURM_GPUS_PER_NODE=2."""
    env = step_env(0, SLURM_GPUS_PER_NODE="2", CUDA_VISIBLE_DEVICES="0", SLURM_STEP_GPUS="0")
    assert world(env).world_info() == {"hlnode1": [0], "hlnode2": [0]}


# -- misuse and broken environments -------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"SLURM_STEP_TASKS_PER_NODE": "2(x2)"},
        {"SLURM_STEP_TASKS_PER_NODE": "3,1"},
        {"SLURM_LOCALID": "1"},
        {"SLURM_STEP_TASKS_PER_NODE": None, "SLURM_NTASKS_PER_NODE": "4"},
    ],
)
def test_more_than_one_task_per_node_is_refused(extra: Dict[str, Optional[str]]) -> None:
    with pytest.raises(AdapterError) as info:
        world(step_env(0, **extra))
    assert "--ntasks-per-node=1" in str(info.value)


def test_stale_job_ntasks_per_node_is_ignored_inside_a_step() -> None:
    """srun -N1 -n1 in sbatch --ntasks-per-node=4 keeps SLURM_NTASKS_PER_NODE=4 (measured)."""
    env = step_env(
        0,
        SLURM_NTASKS_PER_NODE="4",
        SLURM_STEP_NODELIST="hlnode1",
        SLURM_STEP_NUM_NODES="1",
        SLURM_STEP_TASKS_PER_NODE="1",
    )
    assert world(env).world_info() == {"hlnode1": [0, 1]}


@pytest.mark.parametrize("name", ["SLURM_NODEID", "SLURM_JOB_ID"])
def test_missing_required_variable_is_named(name: str) -> None:
    with pytest.raises(AdapterError, match=name):
        world(step_env(0, **{name: None}))


def test_missing_node_list_is_named() -> None:
    env = step_env(0, SLURM_STEP_NODELIST=None, SLURM_JOB_NODELIST=None, SLURM_NODELIST=None)
    with pytest.raises(AdapterError, match="SLURM_STEP_NODELIST"):
        world(env)


def test_job_node_list_is_a_fallback_only_when_its_length_matches() -> None:
    """Inside sbatch, a one-node step's SLURM_NODELIST still names every job node (measured)."""
    env = step_env(
        0, SLURM_STEP_NODELIST=None, SLURM_STEP_NUM_NODES="1", SLURM_STEP_TASKS_PER_NODE="1"
    )
    with pytest.raises(AdapterError, match="SLURM_STEP_NODELIST"):
        world(env)
    assert world(step_env(1, SLURM_STEP_NODELIST=None)).node_rank == 1


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"SLURM_STEP_NODELIST": "hlnode[2-1]"}, "SLURM_STEP_NODELIST"),
        ({"SLURM_STEP_NUM_NODES": "3"}, "SLURM_STEP_NUM_NODES"),
        ({"SLURM_NODEID": "2"}, "SLURM_NODEID"),
        ({"SLURM_NODEID": "x"}, "SLURM_NODEID"),
        ({"SLURMD_NODENAME": "other"}, "SLURMD_NODENAME"),
        ({"SLURM_JOB_ID": "12a"}, "SLURM_JOB_ID"),
        ({"SLURM_STEP_ID": "batch", "SLURM_STEPID": "batch"}, "SLURM_STEP_ID"),
        ({"SLURM_STEP_TASKS_PER_NODE": "1(x3)"}, "SLURM_STEP_TASKS_PER_NODE"),
        ({"SLURM_STEP_TASKS_PER_NODE": "1(x"}, "SLURM_STEP_TASKS_PER_NODE"),
        ({"SLURM_GPUS": "lots"}, "SLURM_GPUS"),
    ],
)
def test_inconsistent_environment_names_the_variable(extra: Dict[str, str], needle: str) -> None:
    with pytest.raises(UsageError) as info:
        world(step_env(0, **extra))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_mpirun_inside_a_step_with_several_ranks_per_node_is_refused() -> None:
    """mpirun in an allocation starts its daemons with srun: ranks see a one-task-per-node step."""
    with pytest.raises(AdapterError, match="--adapter mpi"):
        world(step_env(0, OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_LOCAL_SIZE="2"))
    assert (
        world(step_env(0, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_SIZE="1")).node_rank == 0
    )
    assert world(step_env(1, PMI_SIZE="2")).node_rank == 1  # srun --mpi=pmi2


# -- an sbatch/salloc shell outside srun ----------------------------------------------------


def batch_env(nodes: str = "hlnode1", count: str = "1", **extra: Optional[str]) -> Dict[str, str]:
    """The batch script's own shell as measured: no step id, SLURM_PROCID=0."""
    env = {
        "SLURM_JOB_ID": "57",
        "SLURM_PROCID": "0",
        "SLURM_NODEID": "0",
        "SLURM_LOCALID": "0",
        "SLURMD_NODENAME": "hlnode1",
        "SLURM_JOB_NODELIST": nodes,
        "SLURM_NODELIST": nodes,
        "SLURM_JOB_NUM_NODES": count,
        "SLURM_NNODES": count,
        "SLURM_TASKS_PER_NODE": "1",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "SLURM_JOB_GPUS": "0,1",
    }
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def test_one_node_batch_shell_runs_here_with_the_jobs_gpus() -> None:
    w = world(batch_env())
    assert w.world_info() == {"hlnode1": [0, 1]}
    assert (w.master_addr, w.node_rank, w.run_id) == ("127.0.0.1", 0, "57.batch")
    assert w.gpu_slots
    assert world(batch_env(), nproc_per_node=3).world_size == 3


def test_multi_node_batch_shell_is_refused_with_the_srun_line() -> None:
    with pytest.raises(AdapterError) as info:
        world(batch_env("hlnode[1-2]", "2"))
    assert "srun --ntasks-per-node=1" in str(info.value)
    with pytest.raises(AdapterError, match="srun"):
        world(batch_env("hlnode[1-2]", "", SLURM_JOB_NUM_NODES=None, SLURM_NNODES=None))


def test_salloc_shell_on_the_submit_host_is_refused() -> None:
    """salloc's shell has no SLURMD_NODENAME/SLURM_NODEID: it is not on the allocated node."""
    env = batch_env(SLURMD_NODENAME=None, SLURM_NODEID=None, SLURM_PROCID=None)
    with pytest.raises(AdapterError, match="salloc"):
        world(env)


def test_batch_shell_without_any_node_count_is_refused() -> None:
    env = batch_env(
        SLURM_JOB_NUM_NODES=None, SLURM_NNODES=None, SLURM_JOB_NODELIST=None, SLURM_NODELIST=None
    )
    with pytest.raises(AdapterError, match="SLURM_JOB_NUM_NODES"):
        world(env)
