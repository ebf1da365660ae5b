"""Elastic mode under the session's real Slurm cluster: srun across nodes, and the sbatch example.

The world (nodes, master address and port, run id) comes from Slurm exactly as in static
mode; torch's elastic agent on each node rendezvouses at the first node of the step.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Dict, Tuple

from tests.slurm.cluster import SlurmCluster
from tests.slurm.conftest import ROOT, launcher

JOB = str(ROOT / "tests" / "elastic" / "bin" / "elastic_job.py")


def records(directory: Path) -> Dict[Tuple[int, int], dict]:  # type: ignore[type-arg]
    out = {}
    for path in directory.glob("attempt*_rank*.json"):
        match = re.fullmatch(r"attempt(-?\d+)_rank(\d+)\.json", path.name)
        assert match, path.name
        out[(int(match.group(1)), int(match.group(2)))] = json.loads(path.read_text())
    return out


def test_srun_elastic_job_restarts_every_node_after_a_failure(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    result = slurm_cluster.run(
        [
            "srun", "-N2", "--ntasks-per-node=1", "--kill-on-bad-exit=0",
            *launcher(),
            "--enable_elastic_training", "--nproc_per_node", "2", "--kill_timeout", "3",
            JOB, "--out", str(tmp_path), "--fail-rank", "3",
        ],
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    got = records(tmp_path)
    # One all_reduce per rank, in the second round. TORCHELASTIC_RESTART_COUNT counts a
    # node's own restarts: the failing node's agent restarted (1); the other node's agent
    # re-ran its workers for the new round, which torch does not count as a restart (0).
    assert sorted(rank for _, rank in got) == [0, 1, 2, 3]
    assert "rank 3 fails on purpose (attempt 0)" in result.stderr
    assert got[max(k for k in got if k[1] == 3)]["restart"] == 1
    run_ids = {r["env"]["TORCHELASTIC_RUN_ID"] for r in got.values()}
    (run_id,) = run_ids
    job_id = next(iter(got.values()))["env"]["SLURM_JOB_ID"]
    assert run_id.startswith(f"{job_id}.")  # Slurm's <job id>.<step id>, not a constant
    nodes = set()
    for record in got.values():
        env = record["env"]
        assert record["sum"] == 10.0 and record["world_size"] == 4
        assert env["CROSS_SIZE"] == "2" and env["LOCAL_SIZE"] == "2"
        assert env["TORCHELASTIC_RESTART_COUNT"] == str(record["restart"]) in ("0", "1")
        nodes.add((env["SLURMD_NODENAME"], env["CROSS_RANK"]))
    assert len(nodes) == 2 and {rank for _, rank in nodes} == {"0", "1"}


def test_elastic_sbatch_example(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    log = tmp_path / "job.out"
    ckpt = tmp_path / "ckpt"
    hpclaunch = " ".join(shlex.quote(part) for part in launcher())
    submitted = slurm_cluster.run(
        [
            "sbatch", "--parsable", f"--output={log}",
            f"--export=ALL,HPCLAUNCH={hpclaunch},CKPT={ckpt},MIN_NODES=1",
            str(ROOT / "examples" / "slurm" / "elastic.sbatch"),
            "--steps", "5",
        ],
        cwd=ROOT,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    state = slurm_cluster.wait_job_done(job_id, timeout=240)
    text = log.read_text() if log.exists() else ""
    assert state == "COMPLETED", text
    assert "done at step 5 of 5 (4 ranks)" in text
    assert (ckpt / "done").read_text() == "5"
