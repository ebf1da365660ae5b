"""The record of a job on the tests' real Slurm cluster: one event log per node on a shared
directory (``{node_rank}``, ``{host}`` filled in by each node's launcher), and the report
that reads them all: which rank failed first, across nodes, and signals from ``scancel``."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import List

from tests.conftest import WORKER
from tests.recording import metric, named, parse_metrics, read_events, report, report_json
from tests.slurm.cluster import SlurmCluster
from tests.slurm.conftest import ROOT, launcher
from tests.slurm.test_slurm_cluster import SIGWORKER, sbatch, srun, wait_for_files

ELASTIC_JOB = str(ROOT / "tests" / "elastic" / "bin" / "elastic_job.py")


def record_flags(tmp_path: Path) -> List[str]:
    return ["--event_log", f"{tmp_path}/events/{{node_rank}}-{{host}}.jsonl",
            "--metrics_file", f"{tmp_path}/metrics/{{host}}.prom"]


def node_logs(tmp_path: Path) -> List[Path]:
    return sorted((tmp_path / "events").iterdir())


def test_a_failing_rank_on_the_second_node_is_the_root_cause(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    result = srun(slurm_cluster, "-N2", "--ntasks-per-node=1", *launcher(),
                  *record_flags(tmp_path), "--nproc_per_node", "2", WORKER,
                  "--exit-rank", "3", "--code", "3")
    # Rank 3's failure ends the step on node 0 too (issue 25) unless node 0's ranks were done
    # already: srun's status is the highest of its tasks' (3, or node 0's 143), and the
    # step's output names the failing task's code (srun may say 143 for the cancelled step
    # even when node 0 had already exited 0).
    assert result.returncode in (3, 128 + signal.SIGTERM), result.stderr
    assert "task 1: Exited with exit code 3" in result.stderr
    logs = node_logs(tmp_path)
    assert [p.name.split("-")[0] for p in logs] == ["0", "1"]
    run_ids, hosts = set(), []
    for node, path in enumerate(logs):
        events = read_events(path)
        assert {e["node_rank"] for e in events} == {node}
        run_ids |= {e["run_id"] for e in events}
        hosts.append(events[0]["host"])
        assert path.name == f"{node}-{events[0]['host']}.jsonl"
        assert events[0]["adapter"] == "slurm" and events[0]["world"]["nodes"] == 2
        assert events[0]["ranks"] == [2 * node, 2 * node + 1]
        spawned = sorted(e["rank"] for e in named(events, "worker_spawned"))
        assert spawned == [2 * node, 2 * node + 1]
    assert len(run_ids) == 1 and len(set(hosts)) == 2
    second = read_events(logs[1])
    failed = [e for e in named(second, "worker_exit") if e["exit_code"] == 3]
    assert [e["rank"] for e in failed] == [3] and not failed[0]["during_teardown"]
    assert second[-1]["exit_status"] == 3
    first = read_events(logs[0])
    ended = [e["action"] for e in named(first, "scheduler_end")]
    if first[-1]["exit_status"] == 0:  # node 0's ranks had finished before the step ended
        assert ended == []
    else:
        assert first[-1]["exit_status"] == 128 + signal.SIGTERM and ended == ["ended"]
    assert [e["action"] for e in named(second, "scheduler_end")] == ["requested"]
    for host in hosts:
        series = parse_metrics(tmp_path / "metrics" / f"{host}.prom")
        assert metric(series, "hpclaunch_workers_planned") == 2
        assert {dict(labels)["run_id"] for _, labels in series} == run_ids
    story = report_json(str(tmp_path / "events"))
    root = story["root_cause"]
    assert (root["rank"], root["node_rank"], root["exit_code"]) == (3, 1, 3)
    assert root["host"] == hosts[1]
    assert [n["exit_status"] for n in story["per_node"]] == [first[-1]["exit_status"], 3]
    assert story["outcome"] == "failed" and story["nodes"]["missing"] == []
    text = report(str(tmp_path / "events")).stdout
    assert f"root cause: rank 3 on node 1 ({hosts[1]}) exited with code 3" in text
    # Node 0's log alone: a report still, naming the node whose log is missing.
    partial = report(str(logs[0])).stdout
    assert f"missing: no event log from node 1 ({hosts[1]})" in partial
    assert "outcome: incomplete record" in partial


def test_scancel_is_a_signal_from_outside_on_every_node(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # Workers that ignore SIGTERM: each launcher's teardown needs its SIGKILL, 1 s later.
    command = [*launcher(), *record_flags(tmp_path), "--nproc_per_node", "2",
               "--kill_timeout", "1", SIGWORKER, "--dir", str(tmp_path), "--ignore-term"]
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nsrun -N2 --ntasks-per-node=1 "
                      f"{' '.join(shlex.quote(c) for c in command)}\n")
    job_id = sbatch(slurm_cluster, "-N2", "--ntasks-per-node=1",
                    f"--output={tmp_path}/job.out", str(script))
    wait_for_files([tmp_path / f"ready.{rank}" for rank in range(4)], slurm_cluster, job_id)
    result = slurm_cluster.run(["scancel", job_id])
    assert result.returncode == 0, result.stderr
    assert slurm_cluster.wait_job_done(job_id, timeout=60) == "CANCELLED"
    logs = node_logs(tmp_path)
    assert len(logs) == 2
    for path in logs:
        events = read_events(path)
        signals = named(events, "signal")
        assert [(s["signal"], s["action"]) for s in signals][:1] == [("SIGTERM", "teardown")]
        assert events[-1]["event"] == "end" and events[-1]["exit_status"] == 143
        exits = named(events, "worker_exit")
        assert len(exits) == 2 and all(e["during_teardown"] for e in exits)
        assert [e["signal"] for e in exits] == ["SIGKILL", "SIGKILL"]
        assert not any(e["oom_killed"] for e in exits)  # the launcher's own SIGKILL
        (teardown,) = named(events, "teardown")
        assert (teardown["sigterm"], teardown["sigkill"]) == (2, 2)
    story = report_json(str(tmp_path / "events"))
    assert "SIGTERM from outside" in story["root_cause"]["what"]
    assert len([s for s in story["signals"] if "SIGTERM" in s["what"]]) >= 2


def test_an_elastic_job_under_srun_records_its_restart_on_every_node(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    result = slurm_cluster.run(
        ["srun", "-N2", "--ntasks-per-node=1", "--kill-on-bad-exit=0", *launcher(),
         *record_flags(tmp_path), "--enable_elastic_training", "--nproc_per_node", "2",
         "--kill_timeout", "3", ELASTIC_JOB, "--out", str(tmp_path / "out"),
         "--fail-rank", "3"],
        timeout=240, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    logs = node_logs(tmp_path)
    assert len(logs) == 2
    reasons = []
    for node, path in enumerate(logs):
        events = read_events(path)
        assert {e["node_rank"] for e in events} == {node} and events[-1]["exit_status"] == 0
        (restart,) = named(events, "restart")
        reasons.append(restart["reason"])
        assert events[0]["elastic"] is True and events[0]["adapter"] == "slurm"
    # The node that ran rank 3 restarted because its group failed; the other one because
    # the membership changed (torch re-ran its workers for the new round).
    assert sorted(reasons) == ["membership changed", "worker group failed"]
    story = report_json(str(tmp_path / "events"))
    assert story["outcome"] == "succeeded"
    assert (story["root_cause"]["rank"], story["root_cause"]["exit_code"]) == (3, 3)
    failed_node = reasons.index("worker group failed")
    assert story["root_cause"]["node_rank"] == failed_node
