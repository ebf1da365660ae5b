"""hpclaunch under a real Slurm: srun, sbatch, scancel on the session's test cluster.

Each job writes what it saw to files (srun ``--output`` per task, workers' rank files); the
tests read those, and poll Slurm only where Slurm alone knows (job state), with a deadline.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from tests.slurm.cluster import KILL_WAIT, SlurmCluster, free_port, wait_until
from tests.slurm.conftest import ROOT, launcher

SIGWORKER = str(Path(__file__).with_name("sigworker.py"))
ALLREDUCE = str(ROOT / "examples" / "allreduce.py")


def is_alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def srun(cluster: SlurmCluster, *args: str, timeout: float = 180):  # type: ignore[no-untyped-def]
    return cluster.run(["srun", *args], timeout=timeout, cwd=ROOT)


def sbatch(cluster: SlurmCluster, *args: str) -> str:
    result = cluster.run(["sbatch", "--parsable", *args], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def wait_for_files(
    paths: List[Path], cluster: SlurmCluster, job_id: str, timeout: float = 60
) -> None:
    """Files are the workers' signal; the job state only tells us to stop waiting early."""

    def ready() -> bool:
        if all(path.exists() for path in paths):
            return True
        state = cluster.job_state(job_id)
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            raise AssertionError(f"job {job_id} is {state} before {paths} appeared")
        return False

    wait_until(ready, timeout, f"{len(paths)} files from job {job_id}")


def dry_runs(out: Path, tasks: int) -> Dict[int, dict]:
    return {task: json.loads((out / f"{task}.json").read_text()) for task in range(tasks)}


# -- the world ----------------------------------------------------------------------------


def test_dry_run_every_node_agrees(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    result = srun(
        slurm_cluster,
        "-N3",
        "--ntasks-per-node=1",
        "--gpus-per-node=2",
        f"--output={tmp_path}/%t.json",
        "--error",
        f"{tmp_path}/%t.err",
        *launcher(),
        "--dry-run",
        ALLREDUCE,
    )
    assert result.returncode == 0, result.stderr + "".join(
        p.read_text() for p in tmp_path.glob("*.err")
    )
    plans = dry_runs(tmp_path, 3)
    agreed = {
        json.dumps([p["master_addr"], p["master_port"], p["world_size"], p["run_id"]])
        for p in plans.values()
    }
    assert len(agreed) == 1
    nodes = slurm_cluster.nodes
    for task, plan in plans.items():
        assert plan["adapter"] == "slurm"
        assert plan["node_rank"] == task  # one task per node: task t is SLURM_NODEID t
        assert list(plan["world_info"]) == nodes
        assert [len(slots) for slots in plan["world_info"].values()] == [2, 2, 2]
        assert plan["master_addr"] == nodes[0]
        assert plan["world_size"] == 6
        ranks = [worker["rank"] for worker in plan["workers"]]
        assert ranks == [2 * task, 2 * task + 1]
        for worker in plan["workers"]:
            assert worker["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
            assert worker["env"]["TORCHELASTIC_RUN_ID"] == plan["run_id"]


def test_gloo_allreduce_two_nodes_by_two_workers(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """The acceptance line: no flag beyond --nproc_per_node."""
    out = tmp_path / "ranks"
    out.mkdir()
    result = srun(
        slurm_cluster,
        "-N2",
        "--ntasks-per-node=1",
        *launcher(),
        "--nproc_per_node",
        "2",
        ALLREDUCE,
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all_reduce over 4 ranks (gloo): sum=10 expected=10 OK" in result.stdout
    records = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(4)]
    for rank, record in enumerate(records):
        env = record["env"]
        assert record["sum"] == 10.0
        assert env["RANK"] == str(rank)
        assert env["LOCAL_RANK"] == str(rank % 2)
        assert env["WORLD_SIZE"] == "4"
        assert env["CROSS_RANK"] == env["SLURM_NODEID"] == str(rank // 2)
        assert env["MASTER_ADDR"] == slurm_cluster.nodes[0]
        assert env["SLURMD_NODENAME"] == slurm_cluster.nodes[rank // 2]
        assert "CUDA_VISIBLE_DEVICES" not in env  # no GPUs asked: plain slots
    assert len({r["env"]["TORCHELASTIC_RUN_ID"] for r in records}) == 1


def test_sbatch_example_script(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "ranks"
    out.mkdir()
    log = tmp_path / "job.out"
    hpclaunch = " ".join(shlex.quote(part) for part in launcher())
    port = free_port()  # launcher flags reach hpclaunch through HPCLAUNCH_ARGS
    job_id = sbatch(
        slurm_cluster,
        f"--output={log}",
        f"--export=ALL,HPCLAUNCH={hpclaunch},HPCLAUNCH_ARGS=--master_port {port}",
        str(ROOT / "examples" / "slurm" / "allreduce.sbatch"),
        "--out",
        str(out),
    )
    state = slurm_cluster.wait_job_done(job_id, timeout=180)
    text = log.read_text() if log.exists() else ""
    assert state == "COMPLETED", text
    assert "all_reduce over 4 ranks" in text and "OK" in text  # 2 nodes x 2 (fake) GPUs
    records = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(4)]
    assert {r["env"]["CUDA_VISIBLE_DEVICES"] for r in records} == {"0,1"}
    assert {r["env"]["MASTER_PORT"] for r in records} == {str(port)}


# -- signals ------------------------------------------------------------------------------


def start_sigworkers(cluster: SlurmCluster, tmp_path: Path, *worker_args: str) -> str:
    script = tmp_path / "job.sh"
    command = [
        *launcher(),
        "--nproc_per_node",
        "2",
        "--kill_timeout",
        "1",
        SIGWORKER,
        "--dir",
        str(tmp_path),
        *worker_args,
    ]
    script.write_text(
        f"#!/bin/bash\nsrun -N2 --ntasks-per-node=1 {' '.join(shlex.quote(c) for c in command)}\n"
    )
    job_id = sbatch(
        cluster, "-N2", "--ntasks-per-node=1", f"--output={tmp_path}/job.out", str(script)
    )
    wait_for_files([tmp_path / f"ready.{rank}" for rank in range(4)], cluster, job_id)
    return job_id


def test_scancel_usr1_reaches_every_worker(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id = start_sigworkers(slurm_cluster, tmp_path, "--exit-on-usr1")
    result = slurm_cluster.run(["scancel", "--signal=USR1", job_id])
    assert result.returncode == 0, result.stderr
    wait_for_files([tmp_path / f"usr1.{rank}" for rank in range(4)], slurm_cluster, job_id)
    # The launcher kept running and ended normally once its workers exited 0.
    assert slurm_cluster.wait_job_done(job_id, timeout=60) == "COMPLETED"


def test_scancel_leaves_no_survivors(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Workers that ignore SIGTERM, each with a setsid'd descendant, are all gone."""
    job_id = start_sigworkers(slurm_cluster, tmp_path, "--ignore-term", "--grandchild")
    pids = [
        int(pid) for rank in range(4) for pid in (tmp_path / f"ready.{rank}").read_text().split()
    ]
    assert len(pids) == 8 and all(is_alive(pid) for pid in pids)
    result = slurm_cluster.run(["scancel", job_id])
    assert result.returncode == 0, result.stderr
    assert slurm_cluster.wait_job_done(job_id, timeout=60) == "CANCELLED"
    # Slurm SIGKILLs the launcher's process group KillWait s after TERM; the launcher must
    # have ended its workers' trees by then (kill_timeout 1 s), so nothing outlives that.
    wait_until(
        lambda: not any(is_alive(pid) for pid in pids),
        KILL_WAIT + 10,
        f"no survivors among {pids}",
    )


# -- misuse -------------------------------------------------------------------------------


def test_two_tasks_per_node_is_an_error(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    result = srun(slurm_cluster, "-N2", "-n4", *launcher(), "--dry-run", ALLREDUCE)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("hpclaunch: error:")]
    assert lines and all("--ntasks-per-node=1" in line for line in lines)
    assert "Traceback" not in result.stderr and not result.stdout.strip()


def run_in_batch_shell(cluster: SlurmCluster, tmp_path: Path, nodes: int) -> tuple:
    script = tmp_path / "shell.sh"
    command = " ".join(shlex.quote(c) for c in [*launcher(), "--dry-run", ALLREDUCE])
    script.write_text(
        f"#!/bin/bash\n{command} > {tmp_path}/plan.json 2> {tmp_path}/err.txt\n"
        f"echo $? > {tmp_path}/rc\n"
    )
    job_id = sbatch(
        cluster,
        f"-N{nodes}",
        "--ntasks-per-node=1",
        "--gpus-per-node=1",
        f"--output={tmp_path}/job.out",
        str(script),
    )
    cluster.wait_job_done(job_id)
    return (
        int((tmp_path / "rc").read_text()),
        (tmp_path / "plan.json").read_text(),
        (tmp_path / "err.txt").read_text(),
    )


def test_batch_shell_of_a_multi_node_job_is_an_error(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    rc, out, err = run_in_batch_shell(slurm_cluster, tmp_path, nodes=2)
    assert rc == 2 and not out
    assert err.startswith("hpclaunch: error:") and "srun --ntasks-per-node=1" in err
    assert len(err.strip().splitlines()) == 1


def test_batch_shell_of_a_one_node_job_runs_here(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    rc, out, err = run_in_batch_shell(slurm_cluster, tmp_path, nodes=1)
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["adapter"] == "slurm"
    assert len(plan["world_info"]) == 1 and plan["world_size"] == 1  # the job's one GPU
    assert plan["workers"][0]["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_missing_slurm_fails_in_ci_instead_of_skipping() -> None:
    """The CI rule itself: with CI=true, require() fails where it would skip."""

    env = dict(os.environ, CI="true", PATH="/nonexistent")
    code = (
        "import pytest, tests.slurm.conftest as c\n"
        "try:\n    c.require(False, 'x')\nexcept pytest.fail.Exception:\n    print('failed')\n"
        "except pytest.skip.Exception:\n    print('skipped')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert result.stdout.strip() == "failed", result.stderr


# -- the pre-emption example --------------------------------------------------------------


def test_requeue_example_checkpoints_on_usr1_and_resumes(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """scancel --signal=USR1 stands in for --signal=USR1@90: same signal, same route."""
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "job.out"
    hpclaunch = " ".join(shlex.quote(part) for part in launcher())
    job_id = sbatch(
        slurm_cluster,
        f"--output={log}",
        f"--export=ALL,HPCLAUNCH={hpclaunch},CKPT={ckpt}",
        str(ROOT / "examples" / "slurm" / "train-requeue.sbatch"),
        "--steps",
        "100000",
        "--step-seconds",
        "0.01",
    )
    try:
        wait_for_files([ckpt / "started.0"], slurm_cluster, job_id, timeout=120)
        assert slurm_cluster.run(["scancel", "--signal=USR1", job_id]).returncode == 0
        # The requeued run (SLURM_RESTART_COUNT=1) starts from the checkpoint.
        wait_until(lambda: (ckpt / "started.1").exists(), 180, "the requeued run to start")
        resumed_at = int((ckpt / "started.1").read_text())
        assert 0 <= resumed_at < 100000
        wait_until(lambda: "resumed at step" in log.read_text(), 120, "the resume message")
        text = log.read_text()
        assert f"resumed at step {resumed_at}" in text
        assert f"preempted at step {resumed_at} of 100000 (4 ranks)" in text
        assert "requeueing" in text
    finally:
        slurm_cluster.run(["scancel", job_id])
        slurm_cluster.wait_job_done(job_id, timeout=60)


def test_uneven_gpu_total_fails_on_every_node_and_nproc_fixes_it(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """sbatch -N2 --gpus=3: Slurm gives one node 2 GPUs and the other 1, telling neither."""
    dry_run = " ".join(shlex.quote(c) for c in [*launcher(), "--dry-run", ALLREDUCE])
    fixed = dry_run.replace("--dry-run", "--dry-run --nproc_per_node 1")
    script = tmp_path / "uneven.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"srun --output={tmp_path}/bad.%t.out --error={tmp_path}/bad.%t.err {dry_run}\n"
        f"echo $? > {tmp_path}/bad.rc\n"
        f"srun --output={tmp_path}/good.%t.json {fixed}\n"
        f"echo $? > {tmp_path}/good.rc\n"
    )
    job_id = sbatch(
        slurm_cluster,
        "-N2",
        "--ntasks-per-node=1",
        "--gpus=3",
        f"--output={tmp_path}/job.out",
        str(script),
    )
    slurm_cluster.wait_job_done(job_id)
    assert int((tmp_path / "bad.rc").read_text()) != 0
    for task in range(2):
        err = (tmp_path / f"bad.{task}.err").read_text().strip()
        assert err.startswith("hpclaunch: error:") and "--gpus-per-node" in err, err
        assert not (tmp_path / f"bad.{task}.out").read_text().strip()
    assert int((tmp_path / "good.rc").read_text()) == 0
    plans = [json.loads((tmp_path / f"good.{task}.json").read_text()) for task in range(2)]
    assert [p["world_size"] for p in plans] == [2, 2]
