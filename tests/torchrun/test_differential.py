"""hpclaunch-torchrun against torchrun itself: the same command lines, a worker that
records its argv and environment, and a strict comparison (tests/torchrun/helpers.py).

Scenarios: one node, two "nodes" on this machine (static form), --standalone, module mode,
--no-python, PET_* only, --virtual-local-rank, --run-path, and a c10d rendezvous (elastic
mode). The last tests show that the comparison fails on a deliberately wrong value, both
in recorded data and in a real run that differs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import pytest

from tests.conftest import free_port
from tests.torchrun.helpers import (
    RANDOM,
    RECORDER,
    Records,
    base_env,
    differences,
    hpclaunch_cmd,
    records,
    run_nodes,
    torchrun_cmd,
)

pytestmark = pytest.mark.usefixtures("torch_available")


def both(
    tmp_path: Path,
    node_args: Sequence[Sequence[str]],
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[Path] = None,
    node_envs: Sequence[Dict[str, str]] = (),
) -> Tuple[Records, Records]:
    """Run every node's command line under torchrun, then under hpclaunch-torchrun."""
    full = dict(base_env(tmp_path), **(env or {}))
    ran = {}
    for name, cmd in (("torchrun", torchrun_cmd), ("hpclaunch", hpclaunch_cmd)):
        results = run_nodes([cmd(*args) for args in node_args], full, tmp_path / name,
                            cwd=cwd, node_envs=node_envs)
        for result in results:
            assert result.returncode == 0, f"{name}: {result.stderr}"
        ran[name] = records(tmp_path / name)
    return ran["torchrun"], ran["hpclaunch"]


def assert_same(
    torchrun: Records, hpclaunch: Records, random: FrozenSet[str] = frozenset(),
    elastic: bool = False,
) -> None:
    found = differences(torchrun, hpclaunch, random, elastic)
    assert found == [], "\n".join(found)


def two_nodes(port: int, *args: str) -> List[List[str]]:
    return [["--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
             "--master-port", str(port), *args] for rank in (0, 1)]


def test_one_node(tmp_path: Path) -> None:
    """torchrun's implicit single-node form: its port and run id are random."""
    torchrun, ours = both(tmp_path, [["--nproc-per-node", "2", RECORDER, "--x", "1"]])
    assert sorted(torchrun) == [0, 1]
    assert_same(torchrun, ours, RANDOM)
    assert ours[0]["env"]["OMP_NUM_THREADS"] == "1"  # type: ignore[index]


def test_two_nodes_static(tmp_path: Path) -> None:
    port = free_port()
    torchrun, ours = both(tmp_path, two_nodes(
        port, "--nproc_per_node", "2", "--rdzv-id", "job7", "--role", "trainer",
        "--max_restarts", "0", RECORDER, "--epochs", "3"))
    assert sorted(torchrun) == [0, 1, 2, 3]
    assert_same(torchrun, ours)  # every value defined: master, port, run id all compared


def test_standalone(tmp_path: Path) -> None:
    torchrun, ours = both(tmp_path, [["--standalone", "--nproc_per_node=3", RECORDER, "a b"]])
    assert sorted(torchrun) == [0, 1, 2]
    assert_same(torchrun, ours, RANDOM)


def test_module_mode(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    shutil.copy(RECORDER, package / "record_env.py")
    torchrun, ours = both(
        tmp_path, [["--nproc-per-node", "2", "-m", "record_env", "--flag"]],
        env={"PYTHONPATH": str(package)},
    )
    assert torchrun[0]["argv"] == [str(package / "record_env.py"), "--flag"]
    assert_same(torchrun, ours, RANDOM)


def test_no_python(tmp_path: Path) -> None:
    """The program as given (./rec.py): its argv[0] is what torchrun's Popen would give."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(RECORDER, work / "rec.py")
    (work / "rec.py").chmod(0o755)
    torchrun, ours = both(
        tmp_path, [["--no-python", "--nproc-per-node", "2", "./rec.py", "x"]], cwd=work
    )
    assert torchrun[0]["argv"] == ["./rec.py", "x"]
    assert_same(torchrun, ours, RANDOM)


def test_pet_variables_only(tmp_path: Path) -> None:
    """No flag at all: two nodes described by PET_* alone, as Kubeflow's operator does it.
    OMP_NUM_THREADS set by the user passes through unchanged under both."""
    common = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "2", "PET_MASTER_ADDR": "127.0.0.1",
              "PET_MASTER_PORT": str(free_port()), "PET_RDZV_ID": "pet-job",
              "PET_ROLE": "pet", "OMP_NUM_THREADS": "3"}
    torchrun, ours = both(tmp_path, [[RECORDER], [RECORDER]], env=common,
                          node_envs=[{"PET_NODE_RANK": "0"}, {"PET_NODE_RANK": "1"}])
    assert sorted(torchrun) == [0, 1, 2, 3]
    assert torchrun[3]["env"]["ROLE_NAME"] == "pet"  # type: ignore[index]
    assert_same(torchrun, ours)


def test_virtual_local_rank(tmp_path: Path) -> None:
    torchrun, ours = both(
        tmp_path, [["--nproc-per-node", "2", "--virtual-local-rank", RECORDER]])
    assert [torchrun[r]["env"]["CUDA_VISIBLE_DEVICES"] for r in (0, 1)] == ["0", "1"]  # type: ignore[index]
    assert_same(torchrun, ours, RANDOM)


def test_run_path(tmp_path: Path) -> None:
    torchrun, ours = both(tmp_path, [["--nproc-per-node", "2", "--run-path", RECORDER, "y"]])
    assert torchrun[0]["argv"] == [RECORDER, "y"]
    assert_same(torchrun, ours, RANDOM)


def test_c10d_rendezvous_elastic_mode(tmp_path: Path) -> None:
    """MIN:MAX with c10d: hpclaunch's elastic mode. The agent's store port and address are
    torch's choice under both: compared by presence."""
    port = free_port()
    torchrun, ours = both(tmp_path, [[
        "--nnodes", "1:2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "r1", "--rdzv-conf",
        "last_call_timeout=1", "--max-restarts", "1", "--role", "trainer", RECORDER]])
    assert torchrun[0]["env"]["TORCHELASTIC_MAX_RESTARTS"] == "1"  # type: ignore[index]
    assert_same(torchrun, ours, frozenset({"MASTER_ADDR", "MASTER_PORT"}), elastic=True)


# --------------------------------------------------------------------------- the check fails


def test_the_comparison_fails_on_a_wrong_value(tmp_path: Path) -> None:
    torchrun, ours = both(tmp_path, [["--nproc-per-node", "2", RECORDER]])
    assert differences(torchrun, ours, RANDOM) == []

    def changed(rank: int, name: str, value: object) -> Records:
        copy = {r: {**rec, "env": dict(rec["env"])} for r, rec in ours.items()}  # type: ignore[arg-type]
        env = copy[rank]["env"]
        assert isinstance(env, dict)
        if value is None:
            del env[name]
        else:
            env[name] = value
        return copy

    assert differences(torchrun, changed(1, "WORLD_SIZE", "3"), RANDOM) == [
        "rank 1 WORLD_SIZE: torchrun '2', hpclaunch '3'"]
    assert differences(torchrun, changed(0, "ROLE_NAME", None), RANDOM) == [
        "rank 0 ROLE_NAME: torchrun 'default', hpclaunch unset"]
    assert differences(torchrun, changed(0, "SURPRISE", "1"), RANDOM) == [
        "rank 0 SURPRISE: hpclaunch '1', torchrun unset"]
    assert differences(torchrun, changed(1, "TORCHELASTIC_USE_AGENT_STORE", "True"), RANDOM) == [
        "rank 1 TORCHELASTIC_USE_AGENT_STORE: hpclaunch 'True', documented 'False'"]
    wrong_argv = {**ours, 0: {**ours[0], "argv": [RECORDER, "--local_rank=0"]}}
    assert differences(torchrun, wrong_argv, RANDOM) == [
        f"rank 0 argv: torchrun {[RECORDER]!r}, hpclaunch {[RECORDER, '--local_rank=0']!r}"]


def test_the_comparison_fails_on_a_real_run_that_differs(tmp_path: Path) -> None:
    """Plain hpclaunch (DeepSpeed's conventions) is not torchrun: the check says where."""
    env = base_env(tmp_path)
    run_nodes([torchrun_cmd("--nproc-per-node", "2", RECORDER)], env, tmp_path / "t")
    plain = [sys.executable, "-m", "hpclaunch", "--nproc_per_node", "2", RECORDER]
    run_nodes([plain], env, tmp_path / "h")
    found = differences(records(tmp_path / "t"), records(tmp_path / "h"), RANDOM)
    assert "rank 0 ROLE_NAME: torchrun 'default', hpclaunch unset" in found
    assert any(line.startswith("rank 1 argv:") and "--local_rank=1" in line for line in found)
