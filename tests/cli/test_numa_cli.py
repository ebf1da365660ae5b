"""--numa_binding on the command line: the flag, its alias, bad input, and the plan it makes
on a recorded machine (``HPCLAUNCH_TOPOLOGY_ROOT`` names the recorded tree; test-only)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from tests.conftest import error_line, launcher_cmd, run_launcher

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "topology"


@pytest.fixture
def marker_script(tmp_path: Path) -> Path:
    script = tmp_path / "train.py"
    script.write_text(f"open({str(tmp_path / 'spawned')!r}, 'w').close()\n")
    return script


def world(slots: int) -> str:
    return base64.b64encode(json.dumps({"n0": list(range(slots))}).encode()).decode()


def test_help_lists_the_flag_and_its_choices() -> None:
    result = run_launcher("--help")
    assert result.returncode == 0
    assert "--numa_binding {none,node,socket,exclusive}" in result.stdout
    assert "--numa-binding" in result.stdout


CASES: Dict[str, tuple] = {
    "bad mode": (["--numa_binding", "core-complex"], "invalid choice"),
    "with bind_cores_to_rank": (["--numa_binding", "node", "--bind_cores_to_rank"], "use one"),
    "with bind_core_list": (["--numa-binding", "exclusive", "--bind_cores_to_rank",
                             "--bind_core_list", "0"], "use one"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_numa_input_is_one_line_and_exit_2(name: str, marker_script: Path) -> None:
    flags, fragment = CASES[name]
    result = run_launcher(*flags, str(marker_script))
    assert result.returncode == 2, result.stderr
    assert fragment in error_line(result.stderr)
    assert not (marker_script.parent / "spawned").exists()


def test_exclusive_with_fewer_allowed_cpus_than_workers_is_refused(marker_script: Path) -> None:
    """Pinned to CPU 0 (as a Slurm --cpu-bind would), two ranks cannot each own a CPU."""
    result = subprocess.run(
        launcher_cmd("--world_info", world(2), "--numa_binding", "exclusive",
                     str(marker_script)),
        env=dict(os.environ, HPCLAUNCH_TOPOLOGY_ROOT=str(FIXTURES / "dgx-h100")),
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "2 workers share 1 allowed CPU(s) (0)" in error_line(result.stderr)
    assert not (marker_script.parent / "spawned").exists()


def test_uuids_inherited_by_local_workers_find_their_node(marker_script: Path) -> None:
    """Local adapter, CUDA_VISIBLE_DEVICES as UUIDs of the DGX's GPUs 6 and 2."""
    info = (FIXTURES / "dgx-h100/proc/driver/nvidia/gpus")
    uuids = {}
    for pci in ("0000:ba:00.0", "0000:3a:00.0"):
        text = (info / pci / "information").read_text()
        uuids[pci] = next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("GPU UUID"))
    env = dict(os.environ, HPCLAUNCH_TOPOLOGY_ROOT=str(FIXTURES / "dgx-h100"),
               CUDA_VISIBLE_DEVICES=f"{uuids['0000:ba:00.0']},{uuids['0000:3a:00.0']}")
    result = run_launcher("--adapter", "local", "--numa_binding", "socket", "--dry-run",
                          "--log_level", "debug", str(marker_script), env=env)
    assert result.returncode == 0, result.stderr
    workers = json.loads(result.stdout)["workers"]
    assert [w["mem_node"] for w in workers] == [1, 0]
    socket0 = sorted(set(range(56)) | set(range(112, 168)))
    allowed = sorted(os.sched_getaffinity(0))
    assert workers[1]["cpus"] == [c for c in allowed if c in socket0]
    assert "(topology read from " in result.stderr
    assert "GPU-" in result.stderr and "0000:ba:00.0) node 1 socket 1" in result.stderr
