"""The record of elastic launches (real torch gloo jobs): restarts, a failure that exhausts them,
a SIGTERM from outside, and a two-node world with one event log per node.

Under torch's agent the launcher does not reap the workers itself; these tests check that
their starts, exits and restarts are still in the record, against what the workers report
on a FIFO (their PIDs and attempt numbers) and what the job does on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import List

from tests.conftest import (
    BIN,
    free_port,
    kill_all,
    launcher_cmd,
    marked_env,
    processes_with_mark,
    run_launcher,
    start_launcher,
    wait_no_marked,
)
from tests.elastic.test_elastic import ELASTIC, JOB, ready, wait_for_world, world_info
from tests.recording import (
    fifo_at,
    metric,
    named,
    parse_metrics,
    read_events,
    report,
    report_json,
)

HOG = str(BIN / "hog.py")


def record_flags(tmp_path: Path) -> List[str]:
    return ["--event_log", str(tmp_path / "events" / "node{node_rank}.jsonl"),
            "--metrics_file", str(tmp_path / "metrics-{node_rank}.prom")]


def test_a_restart_is_recorded_with_the_failure_before_it(
    torch_available: None, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with fifo_at(tmp_path / "ready.fifo") as fifo:
        result = run_launcher(*ELASTIC, *record_flags(tmp_path), "--nproc_per_node", "2",
                              "--master_port", str(free_port()),
                              JOB, "--out", str(out), "--fail-rank", "1", "--ready", fifo.path,
                              timeout=180)
        assert result.returncode == 0, result.stderr
        second = {r["rank"]: r for r in ready(fifo.expect(2))}
    events = read_events(tmp_path / "events" / "node0.jsonl")
    names = [e["event"] for e in events]
    assert names[0] == "launch" and names[-1] == "end" and names.count("restart") == 1
    (restart,) = named(events, "restart")
    assert restart["attempt"] == 1 and restart["reason"] == "worker group failed"
    split = events.index(restart)
    first_round, second_round = events[:split], events[split:]
    failed = [e for e in named(first_round, "worker_exit") if e["rank"] == 1]
    assert len(failed) == 1 and failed[0]["exit_code"] == 3
    assert failed[0]["during_teardown"] is False
    stopped = [e for e in named(first_round, "worker_exit") if e["rank"] == 0]
    assert all(e["during_teardown"] for e in stopped)  # torch's agent stopped it after rank 1
    spawned = {e["rank"]: e for e in named(second_round, "worker_spawned")}
    assert {r: e["pid"] for r, e in spawned.items()} == {r: second[r]["pid"] for r in second}
    assert all(e["restart_count"] == 1 for e in spawned.values())
    for end in named(second_round, "worker_exit"):
        assert end["exit_code"] == 0 and end["cpu_seconds"] > 0
        assert end["peak_rss_bytes"] is None  # elastic: not known (docs/events.md)
    assert events[-1]["exit_status"] == 0
    series = parse_metrics(tmp_path / "metrics-0.prom")
    assert metric(series, "hpclaunch_restarts_total") == 1
    assert metric(series, "hpclaunch_worker_exits_total", code="0") == 2
    assert metric(series, "hpclaunch_worker_exits_total", code="3") == 1
    assert metric(series, "hpclaunch_workers_running") == 0
    assert "ranks 0-1 exited 0" in result.stderr and "before restarts" in result.stderr
    story = report_json(str(tmp_path / "events"))
    assert story["outcome"] == "succeeded" and story["per_node"][0]["restarts"] == 1
    assert story["root_cause"]["rank"] == 1 and story["root_cause"]["exit_code"] == 3
    assert "first failure (the job recovered from it)" in report(str(tmp_path / "events")).stdout


def test_exhausted_restarts_name_the_failing_rank(torch_available: None, tmp_path: Path) -> None:
    result = run_launcher(*ELASTIC, *record_flags(tmp_path), "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "--max_restarts", "0",
                          JOB, "--out", str(tmp_path), "--fail-rank", "0", "--fail-code", "7",
                          timeout=180)
    assert result.returncode == 7, result.stderr
    assert "used: CPU" in result.stderr  # the failure summary has what the launcher saw
    events = read_events(tmp_path / "events" / "node0.jsonl")
    (failed,) = [e for e in named(events, "worker_exit") if e["exit_code"] == 7]
    assert failed["rank"] == 0 and not failed["during_teardown"]
    assert named(events, "restart") == []
    assert events[-1]["exit_status"] == 7 and events[-1]["failed_rank"] == 0
    story = report_json(str(tmp_path / "events"))
    assert story["outcome"] == "failed"
    assert (story["root_cause"]["rank"], story["root_cause"]["exit_code"]) == (0, 7)


def test_sigterm_from_outside_under_the_agent(torch_available: None, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with fifo_at(tmp_path / "ready.fifo") as fifo, fifo_at(tmp_path / "stop.fifo") as stop:
        proc = start_launcher(*ELASTIC, *record_flags(tmp_path), "--nproc_per_node", "2",
                              "--master_port", str(free_port()), JOB, "--out", str(out),
                              "--ready", fifo.path, "--stop", stop.path, "--train")
        try:
            workers = ready(fifo.expect(2, timeout=120))
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            kill_all([proc.pid])
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    events = read_events(tmp_path / "events" / "node0.jsonl")
    (sig,) = named(events, "signal")
    assert (sig["signal"], sig["action"], sig["workers"]) == ("SIGTERM", "teardown", 2)
    exits = named(events, "worker_exit")
    assert sorted(e["pid"] for e in exits) == sorted(w["pid"] for w in workers)
    assert all(e["during_teardown"] for e in exits)
    (teardown,) = named(events, "teardown")
    assert teardown["reason"] == "signal" and teardown["sigterm"] >= 1
    assert events[-1]["exit_status"] == 128 + signal.SIGTERM
    assert "SIGTERM from outside" in report_json(str(tmp_path / "events"))["root_cause"]["what"]


def test_two_nodes_one_log_each_and_the_failing_node_is_found(
    torch_available: None, tmp_path: Path
) -> None:
    """Rank 3 fails in the first attempt (on whichever node the rendezvous put it); both
    nodes restart; the report, reading both logs, puts the root cause on that node."""
    port = free_port()
    with fifo_at(tmp_path / "ready.fifo") as fifo:
        procs: List[subprocess.Popen[str]] = []
        try:
            for node in (0, 1):
                procs.append(start_launcher(
                    *ELASTIC, *record_flags(tmp_path), "--world_info", world_info(2, 2),
                    "--node_rank", str(node), "--master_addr", "127.0.0.1",
                    "--master_port", str(port), "--rdzv_conf", "last_call_timeout=20",
                    JOB, "--out", str(tmp_path), "--fail-rank", "3", "--ready", fifo.path))
            wait_for_world(fifo, 4, min_restart=0)  # the first attempt never all_reduces
            outputs = [p.communicate(timeout=180) for p in procs]
        finally:
            kill_all(p.pid for p in procs)
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = sorted(os.listdir(tmp_path / "events"))
    assert logs == ["node0.jsonl", "node1.jsonl"]
    failing = []
    for node in (0, 1):
        events = read_events(tmp_path / "events" / f"node{node}.jsonl")
        assert {e["node_rank"] for e in events} == {node}
        assert len(named(events, "restart")) == 1
        failing += [node for e in named(events, "worker_exit") if e["exit_code"] == 3]
        # Nothing but rank 3's own exit is a cause: the rest were stopped by the agents.
        assert all(e["during_teardown"] for e in named(events, "worker_exit")
                   if e["exit_code"] != 0 and e["exit_code"] != 3)
    assert len(failing) == 1
    story = report_json(str(tmp_path / "events"))
    assert story["nodes"]["found"] == [0, 1] and story["nodes"]["missing"] == []
    root = story["root_cause"]
    assert (root["rank"], root["node_rank"], root["exit_code"]) == (3, failing[0], 3)
    # One log alone still makes a report, and names the node whose log is missing.
    other = 1 - failing[0]
    alone = str(tmp_path / "events" / f"node{other}.jsonl")
    partial = report_json(alone)
    assert partial["nodes"]["missing"] == [{"node_rank": failing[0], "host": f"node{failing[0]}"}]
    assert partial["root_cause"] is None  # its own workers only stopped: no cause here
    assert f"missing: no event log from node {failing[0]} (node{failing[0]})" in report(
        alone).stdout


def test_a_worker_the_oom_killer_ends_under_the_agent(
    torch_available: None, tmp_path: Path
) -> None:
    """In a memory cgroup big enough for torch's agent (~220 MiB), a worker that keeps taking
    memory is the OOM killer's victim; the launcher, which does not reap it, names it."""
    from tests.integration.memcg import MemoryCgroup

    with MemoryCgroup(limit=768 << 20) as cgroup:
        proc = cgroup.popen(launcher_cmd(
            *ELASTIC, *record_flags(tmp_path), "--nproc_per_node", "2", "--max_restarts", "0",
            "--master_port", str(free_port()), HOG, "--hog-rank", "1", "--mib", "0"))
        try:
            _, stderr = proc.communicate(timeout=180)
        finally:
            kill_all([proc.pid])
        assert cgroup.oom_kills() >= 1
    assert proc.returncode == 128 + signal.SIGKILL, stderr
    events = read_events(tmp_path / "events" / "node0.jsonl")
    (victim,) = [e for e in named(events, "worker_exit") if e["oom_killed"]]
    assert victim["rank"] == 1 and victim["signal"] == "SIGKILL"
    assert not victim["during_teardown"]
    assert "the kernel's OOM killer ended it" in stderr
    assert "rank 1 killed by the OOM killer" in stderr  # the usage line
    root = report_json(str(tmp_path / "events"))["root_cause"]
    assert root["rank"] == 1 and root["oom_killed"] is True


def test_a_sigkilled_elastic_launcher_leaves_whole_lines(
    torch_available: None, tmp_path: Path, mark: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with fifo_at(tmp_path / "ready.fifo") as fifo, fifo_at(tmp_path / "stop.fifo") as stop:
        proc = start_launcher(*ELASTIC, *record_flags(tmp_path), "--nproc_per_node", "2",
                              "--master_port", str(free_port()), JOB, "--out", str(out),
                              "--ready", fifo.path, "--stop", stop.path, "--train",
                              env=marked_env(mark))
        try:
            ready(fifo.expect(2, timeout=120))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            assert wait_no_marked(mark, timeout=30) == []  # agent and workers went with it
        finally:
            kill_all([proc.pid, *processes_with_mark(mark)])
    events = read_events(tmp_path / "events" / "node0.jsonl")  # every line whole
    assert named(events, "end") == [] and len(named(events, "worker_spawned")) == 2
    parse_metrics(tmp_path / "metrics-0.prom")
    story = report_json(str(tmp_path / "events"))
    assert story["outcome"] == "incomplete record"
    assert story["nodes"]["log_stops_early"][0]["node_rank"] == 0
