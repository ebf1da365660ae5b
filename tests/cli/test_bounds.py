"""Sizes no machine has are refused before anything is allocated for them: one short line,
exit 2, from the command line and the API alike.

The launcher runs under a 1 GiB address-space limit: planning a million workers (GBs), or
expanding a core range of a hundred billion ids, cannot pass by being slow instead of
refused; it fails with a MemoryError there.
"""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path
from typing import List

import pytest

import hpclaunch
from hpclaunch.errors import UsageError
from hpclaunch.model.binding import parse_core_list
from hpclaunch.options import MAX_CPUS, MAX_LOCAL_WORKERS, LaunchOptions
from tests.conftest import error_line, launcher_cmd

#: Far more than the launcher needs (~100 MiB), far less than what it was asked for.
ADDRESS_SPACE = 1 << 30
#: An error line a person can read.
LONGEST_LINE = 300


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _run_limited(args: List[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(launcher_cmd(*args, "--no_python", "/bin/sh", "-c",
                                       f"touch {tmp_path}/spawned"),
                          capture_output=True, text=True, timeout=120, preexec_fn=_limited)


CASES = {
    "a million workers, dry run": (["--nproc_per_node", "1000000", "--dry-run"],
                                   "--nproc_per_node"),
    "ten million workers": (["--nproc_per_node", "10000000"], "--nproc_per_node"),
    "a core range of 1e11 ids": (["--bind_cores_to_rank", "--bind_core_list", "0-99999999999"],
                                 "core 99999999999"),
    "a core id past 2**64": (
        ["--bind_cores_to_rank", "--bind_core_list", "0-9999999999999999999999"], "core"),
    "a million core ids": (["--bind_cores_to_rank", "--bind_core_list", "0-1000000"],
                           "core 1000000"),
    "a 5000-digit core id": (["--bind_cores_to_rank", "--bind_core_list", "9" * 5000],
                             "5000 characters"),
}


@pytest.mark.parametrize("args, named", CASES.values(), ids=list(CASES))
def test_sizes_no_machine_has_are_one_short_line(
    args: List[str], named: str, tmp_path: Path
) -> None:
    result = _run_limited(args, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = error_line(result.stderr)
    assert named in line
    assert len(line) < LONGEST_LINE
    assert not (tmp_path / "spawned").exists()


def test_a_world_that_gives_this_node_too_many_slots_is_refused(tmp_path: Path) -> None:
    world = tmp_path / "world.json"
    world.write_text(json.dumps({"big": list(range(MAX_LOCAL_WORKERS + 1))}))
    result = _run_limited(["--world_info", f"@{world}", "--dry-run"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = error_line(result.stderr)
    assert f"{MAX_LOCAL_WORKERS + 1} workers" in line and len(line) < LONGEST_LINE


def test_the_largest_real_sizes_are_still_accepted(tmp_path: Path) -> None:
    result = _run_limited(["--nproc_per_node", str(MAX_LOCAL_WORKERS), "--dry-run"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json.loads(result.stdout)["workers"]) == MAX_LOCAL_WORKERS
    assert parse_core_list(f"0,{MAX_CPUS - 1}") == (0, MAX_CPUS - 1)


def test_the_api_refuses_the_same_sizes() -> None:
    with pytest.raises(UsageError, match="--nproc_per_node asks for 1000000 workers"):
        hpclaunch.detect_world({}, nproc_per_node=1_000_000)
    with pytest.raises(UsageError, match=f"core {MAX_CPUS}"):
        LaunchOptions(bind_cores=(0, MAX_CPUS)).check()
    world = hpclaunch.detect_world({}, nproc_per_node=1)
    with pytest.raises(UsageError, match="core 99999999999,"):
        hpclaunch.plan(world, ["/bin/true"], bind_cores=(99_999_999_999,))
    with pytest.raises(UsageError, match=r"core 9{12}\.\.\. \(5000 characters\)"):
        parse_core_list("9" * 5000)
