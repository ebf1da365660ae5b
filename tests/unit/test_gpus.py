"""One GPU discovery for NVIDIA and AMD: the local adapter counts an AMD node's GPUs as it
counts an NVIDIA node's (recorded sysfs trees from tests/fixtures/topology/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpclaunch.machine import ROOT_VAR
from hpclaunch.machine.gpus import discover, visible_gpus
from tests.conftest import WORKER, run_launcher

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "topology"


@pytest.mark.parametrize(
    "machine, vendor, count",
    [("amd-mi250x", "AMD", 8), ("dgx-h100", "NVIDIA", 8), ("workstation", "NVIDIA", 2),
     ("vm-numa-unknown", "NVIDIA", 4)],
)
def test_discovery_finds_every_vendors_gpus(machine: str, vendor: str, count: int) -> None:
    gpus = discover(str(FIXTURES / machine))
    assert len(gpus) == count and {g.vendor for g in gpus} == {vendor}
    assert visible_gpus({ROOT_VAR: str(FIXTURES / machine)}) == (tuple(range(count)), True)


def test_visible_device_variables_narrow_the_count() -> None:
    root = {ROOT_VAR: str(FIXTURES / "amd-mi250x")}
    assert visible_gpus({**root, "CUDA_VISIBLE_DEVICES": "2,5"}) == ((2, 5), True)
    # HIP's and ROCr's ids are relative to what ROCr exposes: a count, passed on as set.
    assert visible_gpus({**root, "ROCR_VISIBLE_DEVICES": "4,5,6"}) == ((0, 1, 2), False)
    assert visible_gpus({**root, "HIP_VISIBLE_DEVICES": "1"}) == ((0,), False)


def test_no_driver_means_no_gpu(tmp_path: Path) -> None:
    assert discover(str(tmp_path)) == ()
    assert visible_gpus({ROOT_VAR: str(tmp_path)}) == ((), True)


def test_an_amd_node_starts_a_worker_per_gpu() -> None:
    """The local adapter on a recorded MI250X node (8 GCDs, no GPU variable set): eight
    workers, one GPU each, as on an NVIDIA node."""
    env = {"PATH": "/usr/bin:/bin", ROOT_VAR: str(FIXTURES / "amd-mi250x")}
    result = run_launcher("--dry-run", WORKER, env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["world_size"] == 8
    devices = [w["env"]["CUDA_VISIBLE_DEVICES"] for w in shown["workers"]]
    assert devices == ["0,1,2,3,4,5,6,7"] * 8
