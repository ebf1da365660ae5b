"""``--adapter auto``: one ordered list (explicit > slurm > pbs > lsf > mpi > kubeflow >
local), and ``--adapter`` forcing one; explicit and local defaults per the contract."""

from __future__ import annotations

import base64
import json

import pytest

from hpclaunch.adapters import WorldOptions, select
from hpclaunch.adapters.explicit import ExplicitAdapter
from hpclaunch.adapters.local import LocalAdapter
from hpclaunch.errors import UsageError

SLURM_STEP = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}
SBATCH_SHELL = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0"}
OPENMPI = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0", "PMIX_RANK": "0"}
MPICH = {"PMI_SIZE": "2", "PMI_RANK": "1", "PMI_FD": "5"}
WORLD = base64.urlsafe_b64encode(json.dumps({"a": [0, 1], "b": [3]}).encode()).decode()


@pytest.mark.parametrize(
    "env, options, expected",
    [
        ({}, WorldOptions(), "local"),
        (SLURM_STEP, WorldOptions(), "slurm"),
        (SBATCH_SHELL, WorldOptions(), "slurm"),  # the adapter then runs one node or refuses
        (OPENMPI, WorldOptions(), "mpi"),
        (MPICH, WorldOptions(), "mpi"),
        ({**SLURM_STEP, **MPICH}, WorldOptions(), "slurm"),  # srun --mpi=pmi2 sets PMI_* too
        ({**SLURM_STEP, **OPENMPI}, WorldOptions(world_info=WORLD), "explicit"),
    ],
)
def test_auto_detection_order(env: dict[str, str], options: WorldOptions, expected: str) -> None:
    assert select(env, options).name == expected


def test_forced_adapter_wins_over_detection() -> None:
    assert select(SLURM_STEP, WorldOptions(), "local").name == "local"
    assert select({}, WorldOptions(), "mpi").name == "mpi"
    with pytest.raises(UsageError, match="unknown adapter"):
        select({}, WorldOptions(), "nosuch")


def test_explicit_defaults_are_deepspeeds() -> None:
    world = ExplicitAdapter().world({}, WorldOptions(world_info=WORLD))
    assert (world.node_rank, world.master_addr, world.master_port) == (0, "127.0.0.1", 29500)
    assert world.world_info() == {"a": [0, 1], "b": [3]}
    again = ExplicitAdapter().world({}, WorldOptions(world_info=WORLD, node_rank=1))
    assert again.run_id == world.run_id  # every node derives the same run id


def test_local_uses_29500_when_free_else_a_free_port() -> None:
    free = LocalAdapter(hostname=lambda: "h", port_is_free=lambda p: True, free_port=lambda: 1)
    busy = LocalAdapter(hostname=lambda: "h", port_is_free=lambda p: False, free_port=lambda: 4242)
    assert free.world({}, WorldOptions()).master_port == 29500
    assert busy.world({}, WorldOptions()).master_port == 4242
    assert busy.world({}, WorldOptions(master_port=1234)).master_port == 1234


@pytest.mark.parametrize(
    "cvd, nproc, slots, gpu",
    [
        ("2,5", None, [2, 5], True),
        ("2,5", 1, [2], True),
        ("2,5", 3, [0, 1, 2], False),  # more workers than GPUs: plain CPU slots
        ("GPU-aa,GPU-bb", None, [0, 1], False),  # UUIDs: count only, inherited unchanged
        ("", None, [0], False),
    ],
)
def test_local_slots_from_cuda_visible_devices(
    cvd: str, nproc: int | None, slots: list[int], gpu: bool
) -> None:
    adapter = LocalAdapter(hostname=lambda: "h", port_is_free=lambda p: True)
    world = adapter.world({"CUDA_VISIBLE_DEVICES": cvd}, WorldOptions(nproc_per_node=nproc))
    assert list(world.this_host.slots) == slots and world.gpu_slots is gpu
