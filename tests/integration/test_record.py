"""The record of a static launch: ``--event_log``, ``--metrics_file``, the resource summary and
``hpclaunch-report``, from real launches of real workers.

Facts come from outside hpclaunch wherever they can: workers report their own PIDs on a FIFO,
the test's clock brackets every event time, the metrics file goes through prometheus_client's
own parser, and the OOM test reads the kernel's own counter of the cgroup it made.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Dict, List

import pytest

import hpclaunch
from hpclaunch.errors import UsageError
from tests.conftest import (
    BIN,
    WORKER,
    Fifo,
    error_line,
    kill_all,
    launcher_cmd,
    marked_env,
    pids_of,
    processes_with_mark,
    run_launcher,
    signal_and_await_ack,
    start_launcher,
    wait_no_marked,
)
from tests.recording import metric, named, parse_metrics, read_events, report, report_json, wall

HOG = str(BIN / "hog.py")
MIB = 1 << 20


def record_flags(tmp_path: Path) -> List[str]:
    return ["--event_log", str(tmp_path / "events" / "{node_rank}-{host}.jsonl"),
            "--metrics_file", str(tmp_path / "metrics.prom")]


def event_log(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "events").iterdir()
    assert path.name == f"0-{os.uname().nodename}.jsonl"
    return path


def summary_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if re.match(r"hpclaunch: node 0 \(", line)]
    assert len(lines) == 1, stderr
    return lines[0]


# -- a clean run ---------------------------------------------------------------------------


def test_a_clean_run_is_recorded_whole(tmp_path: Path, fifo: Fifo) -> None:
    before = time.time()
    result = run_launcher(*record_flags(tmp_path), "--nproc_per_node", "3", HOG,
                          "--ready", fifo.path, "--hog-rank", "2", "--mib", "96", "--exit")
    after = time.time()
    assert result.returncode == 0, result.stderr
    announced = {int(line.split()[1]): int(line.split()[2]) for line in fifo.expect(3)}
    events = read_events(event_log(tmp_path))
    names = [e["event"] for e in events]
    assert names[0] == "launch" and names[-1] == "end"
    assert sorted(names[1:-1]) == ["worker_exit"] * 3 + ["worker_spawned"] * 3
    assert all(before <= wall(e) <= after for e in events)
    assert {e["host"] for e in events} == {os.uname().nodename}
    assert {e["node_rank"] for e in events} == {0}
    assert len({e["run_id"] for e in events}) == 1
    launch = events[0]
    assert launch["ranks"] == [0, 1, 2] and launch["adapter"] == "local"
    assert launch["world"]["world_size"] == 3 and launch["world"]["nodes"] == 1
    assert launch["version"] == hpclaunch.__version__ and "--event_log" in launch["argv"]
    spawned = {e["rank"]: e["pid"] for e in named(events, "worker_spawned")}
    assert spawned == announced  # the PIDs the workers themselves reported
    exits = {e["rank"]: e for e in named(events, "worker_exit")}
    for rank, end in exits.items():
        assert end["pid"] == announced[rank] and end["local_rank"] == rank
        assert end["exit_code"] == 0 and end["signal"] is None
        assert end["oom_killed"] is False and end["during_teardown"] is False
        assert end["cpu_seconds"] > 0
    # Rank 2 wrote 96 MiB: its peak says so, and it is the node's peak.
    assert exits[2]["peak_rss_bytes"] >= 96 * MIB
    assert max(exits.values(), key=lambda e: e["peak_rss_bytes"])["rank"] == 2
    end = events[-1]
    assert end["exit_status"] == 0 and 0 < end["seconds"] <= after - before
    # The one summary line says the same.
    line = summary_line(result.stderr)
    assert "ranks 0-2 exited 0" in line and line.endswith("(rank 2)")
    peak = float(re.search(r"peak RSS ([\d.]+) MiB", line).group(1))  # type: ignore[union-attr]
    assert peak >= 96
    # The metrics, through a real Prometheus parser.
    series = parse_metrics(tmp_path / "metrics.prom")
    labels = {"run_id": launch["run_id"], "node_rank": "0"}
    assert metric(series, "hpclaunch_workers_running", **labels) == 0
    assert metric(series, "hpclaunch_worker_exits_total", code="0", **labels) == 3
    assert metric(series, "hpclaunch_restarts_total", **labels) == 0
    assert metric(series, "hpclaunch_exit_status", **labels) == 0
    started = metric(series, "hpclaunch_start_time_seconds", **labels)
    assert before - 5 < started <= wall(launch)
    assert all(dict(labels).items() <= dict(ls).items() for _, ls in series)
    assert sorted(os.listdir(tmp_path)) == ["events", "metrics.prom", "ready.fifo"]  # no temp
    story = report_json(str(tmp_path / "events"))
    assert story["outcome"] == "succeeded" and story["root_cause"] is None
    assert story["peaks"]["peak_rank"] == 2


# -- a failing rank ------------------------------------------------------------------------


def test_a_failing_rank_and_what_followed(tmp_path: Path, fifo: Fifo) -> None:
    proc = start_launcher(*record_flags(tmp_path), "--nproc_per_node", "3", WORKER,
                          "--ready", fifo.path, "--exit-rank", "1", "--code", "3", "--hang",
                          "--wait-go")
    try:
        pids = dict((int(line.split()[1]), int(line.split()[2])) for line in fifo.expect(3))
        os.kill(pids[1], signal.SIGUSR1)  # go: rank 1 exits 3, the others hang until TERM
        _, stderr = proc.communicate(timeout=60)
    finally:
        kill_all([proc.pid])
    assert proc.returncode == 3, stderr
    events = read_events(event_log(tmp_path))
    exits = {e["rank"]: e for e in named(events, "worker_exit")}
    assert exits[1]["exit_code"] == 3 and exits[1]["during_teardown"] is False
    assert [exits[r]["signal"] for r in (0, 2)] == ["SIGTERM", "SIGTERM"]
    assert exits[0]["during_teardown"] and exits[2]["during_teardown"]
    (teardown,) = named(events, "teardown")
    assert teardown["reason"] == "worker_failed" and teardown["rank"] == 1
    assert teardown["sigterm"] == 2 and teardown["sigkill"] == 0
    assert events.index(exits[1]) < events.index(teardown) < len(events) - 1
    end = events[-1]
    assert end["event"] == "end" and end["exit_status"] == 3 and end["failed_rank"] == 1
    line = summary_line(stderr)
    assert "ranks 0,2 killed by SIGTERM" in line and "rank 1 exited 3" in line
    assert re.search(r"used: peak RSS [\d.]+ [KMG]iB, CPU", stderr), stderr
    series = parse_metrics(tmp_path / "metrics.prom")
    assert metric(series, "hpclaunch_worker_exits_total", code="3") == 1
    assert metric(series, "hpclaunch_worker_exits_total", code="SIGTERM") == 2
    assert metric(series, "hpclaunch_exit_status") == 3
    story = report_json(str(tmp_path / "events"))
    root = story["root_cause"]
    assert (root["rank"], root["exit_code"], root["node_rank"]) == (1, 3, 0)
    assert story["outcome"] == "failed" and story["exit_status"] == 3
    text = report(str(tmp_path / "events")).stdout
    assert f"root cause: rank 1 on node 0 ({os.uname().nodename}) exited with code 3" in text


# -- signals from outside, and the metrics while the job runs ---------------------------------


def test_sigterm_from_outside_and_live_metrics(tmp_path: Path, fifo: Fifo) -> None:
    proc = start_launcher(*record_flags(tmp_path), "--nproc_per_node", "2", WORKER,
                          "--ready", fifo.path, "--record-signals")
    try:
        pids = pids_of(fifo.expect(2), "worker")
        # The metrics are rewritten on the event loop's clock (every few seconds): wait for
        # the rewrite that shows both workers running (a bounded wait, not a sleep).
        series = _wait_for_metrics(tmp_path / "metrics.prom", "hpclaunch_workers_running", 2)
        ages = [metric(series, "hpclaunch_worker_last_progress_seconds", rank=str(r))
                for r in (0, 1)]
        assert all(0 <= age < 60 for age in ages)
        proc.send_signal(signal.SIGUSR1)
        assert sorted(fifo.expect(2)) == ["signal 0 SIGUSR1", "signal 1 SIGUSR1"]
        assert proc.stderr is not None
        signal_and_await_ack(proc, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        kill_all([proc.pid])
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    events = read_events(event_log(tmp_path))
    signals = named(events, "signal")
    assert [(s["signal"], s["action"]) for s in signals] == [
        ("SIGUSR1", "forwarded"), ("SIGTERM", "teardown")]
    assert [s["workers"] for s in signals] == [2, 2]
    assert sorted(e["pid"] for e in named(events, "worker_exit")) == sorted(pids)
    assert all(e["during_teardown"] for e in named(events, "worker_exit"))
    (teardown,) = named(events, "teardown")
    assert teardown["reason"] == "signal" and teardown["signal"] == "SIGTERM"
    assert teardown["sigterm"] == 2
    assert events[-1]["exit_status"] == 143 and events[-1]["signal"] == "SIGTERM"
    story = report_json(str(tmp_path / "events"))
    assert story["root_cause"]["event"] == "signal"
    assert "SIGTERM from outside" in story["root_cause"]["what"]
    assert metric(parse_metrics(tmp_path / "metrics.prom"), "hpclaunch_workers_running") == 0


def _wait_for_metrics(path: Path, name: str, value: float, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        series = parse_metrics(path)  # always whole: it is replaced by a rename
        if metric(series, name) == value:
            return series
        assert time.monotonic() < deadline, f"{name} never became {value}: {series}"
        time.sleep(0.1)


# -- the launcher SIGKILLed mid-run --------------------------------------------------------


def test_a_sigkilled_launcher_leaves_whole_lines(tmp_path: Path, fifo: Fifo, mark: str) -> None:
    """Killed while it is still starting 64 workers (writing an event per worker): every line
    it wrote is whole, and the report names the node whose log stops without an end."""
    proc = start_launcher(*record_flags(tmp_path), "--nproc_per_node", "64", WORKER,
                          "--ready", fifo.path, "--hang", env=marked_env(mark))
    try:
        fifo.expect(1)  # the first worker runs: the launcher is spawning the others now
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert wait_no_marked(mark) == []
    finally:
        kill_all([proc.pid, *processes_with_mark(mark)])
    events = read_events(event_log(tmp_path))  # every line parses; the last one is whole
    assert events[0]["event"] == "launch" and named(events, "end") == []
    assert 1 <= len(named(events, "worker_spawned")) <= 64
    parse_metrics(tmp_path / "metrics.prom")  # the last rewrite, whole
    story = report_json(str(tmp_path / "events"))
    assert story["outcome"] == "incomplete record"
    assert [stop["node_rank"] for stop in story["nodes"]["log_stops_early"]] == [0]
    assert "without an end" in report(str(tmp_path / "events")).stdout


# -- the OOM killer ------------------------------------------------------------------------


def test_a_worker_the_oom_killer_ends_is_named(tmp_path: Path, fifo: Fifo) -> None:
    from tests.integration.memcg import MemoryCgroup

    with MemoryCgroup(limit=192 * MIB) as cgroup:
        proc = cgroup.popen(launcher_cmd(*record_flags(tmp_path), "--nproc_per_node", "2", HOG,
                                         "--ready", fifo.path, "--hog-rank", "1", "--mib", "0"))
        try:
            _, stderr = proc.communicate(timeout=120)
        finally:
            kill_all([proc.pid])
        assert cgroup.oom_kills() >= 1  # the kernel's own count, read by the test
    assert proc.returncode == 128 + signal.SIGKILL, stderr
    assert "rank 1 (local_rank 1" in stderr
    assert "killed by SIGKILL (9): the kernel's OOM killer ended it (out of memory)" in stderr
    assert "rank 1 killed by the OOM killer" in summary_line(stderr)
    events = read_events(event_log(tmp_path))
    exits = {e["rank"]: e for e in named(events, "worker_exit")}
    assert exits[1]["signal"] == "SIGKILL" and exits[1]["oom_killed"] is True
    assert exits[1]["during_teardown"] is False and exits[1]["peak_rss_bytes"] > 64 * MIB
    assert exits[0]["oom_killed"] is False
    series = parse_metrics(tmp_path / "metrics.prom")
    assert metric(series, "hpclaunch_worker_oom_kills_total") == 1
    assert metric(series, "hpclaunch_worker_exits_total", code="SIGKILL") == 1
    root = report_json(str(tmp_path / "events"))["root_cause"]
    assert root["rank"] == 1 and root["oom_killed"] is True and "OOM killer" in root["what"]


def test_a_sigkill_that_is_not_the_oom_killer_is_not_blamed_on_it(tmp_path: Path) -> None:
    result = run_launcher(*record_flags(tmp_path), "--nproc_per_node", "2", WORKER,
                          "--kill-self-rank", "0", "--hang")
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    assert "OOM" not in result.stderr
    exits = {e["rank"]: e for e in named(read_events(event_log(tmp_path)), "worker_exit")}
    assert exits[0]["signal"] == "SIGKILL" and exits[0]["oom_killed"] is False


# -- no flag, bad paths --------------------------------------------------------------------


def test_without_the_flags_nothing_is_written(tmp_path: Path) -> None:
    result = run_launcher("--nproc_per_node", "2", "--no_python", "/bin/true", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert "ranks 0-1 exited 0" in summary_line(result.stderr)


def test_two_launches_append_to_one_log_and_the_report_picks_the_last(tmp_path: Path) -> None:
    """(Also: the dashed alias of the flag.)"""
    log = tmp_path / "events.jsonl"
    for code in ("0", "5"):
        run_launcher("--event-log", str(log), "--nproc_per_node", "1", "--no_python",
                     "--no_local_rank", "sh", "-c", f"exit {code}")
    events = read_events(log)
    assert [e["exit_status"] for e in named(events, "end")] == [0, 5]
    story = report_json(str(log))
    assert story["exit_status"] == 5 and story["run_id"] == named(events, "launch")[1]["run_id"]
    assert any("pick one with --run_id" in p for p in story["problems"])
    first = named(events, "launch")[0]["run_id"]
    assert report_json(str(log), "--run_id", first)["outcome"] == "succeeded"


def _symlinked(tmp_path: Path) -> str:
    target = tmp_path / "elsewhere"
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    return str(link)


BAD_PATHS: Dict[str, object] = {
    "an unknown field": ("--event_log", "{node}.jsonl", "unknown field {node}"),
    "an attribute": ("--metrics_file", "{host.upper}.prom", "unknown field"),
    "a lone brace": ("--event_log", "x{.jsonl", "write a literal brace as {{"),
    "a symbolic link": ("--event_log", _symlinked, "symbolic link"),
    "a directory": ("--event_log", lambda tmp: str(tmp), "Is a directory"),
    "an unwritable place": ("--metrics_file", "/proc/hpclaunch/metrics.prom", "cannot write"),
}


@pytest.mark.parametrize("name", sorted(BAD_PATHS))
def test_a_bad_record_path_is_exit_2_before_anything_starts(name: str, tmp_path: Path) -> None:
    flag, path, message = BAD_PATHS[name]  # type: ignore[misc]
    if callable(path):
        path = path(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = run_launcher(flag, path, "--nproc_per_node", "2", WORKER, "--env-out", str(out))
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert message in line and flag in line
    assert list(out.iterdir()) == []  # nothing started
    if "{" in path:  # the API refuses it alike, before anything starts
        world = hpclaunch.detect_world({}, nproc_per_node=2)
        field = flag.lstrip("-")
        with pytest.raises(UsageError) as caught:
            hpclaunch.plan(world, [WORKER, "--env-out", str(out)], **{field: path})
        assert line == "hpclaunch: error: " + " ".join(str(caught.value).split())


def test_the_api_keeps_the_same_record(tmp_path: Path) -> None:
    world = hpclaunch.detect_world({}, nproc_per_node=2)
    plan = hpclaunch.plan(world, [WORKER])
    outcome = hpclaunch.launch(plan, event_log=str(tmp_path / "{run_id}.jsonl"),
                               metrics_file=str(tmp_path / "m.prom"))
    assert outcome.exit_code == 0
    log = tmp_path / f"{world.run_id}.jsonl"
    events = read_events(log)
    assert [e["event"] for e in events][0::len(events) - 1] == ["launch", "end"]
    assert metric(parse_metrics(tmp_path / "m.prom"), "hpclaunch_exit_status") == 0
