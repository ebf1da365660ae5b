"""The record's pure parts, against independent oracles: Python's datetime for the event times,
prometheus_client's parser for the metrics text, and expansion for the rank ranges."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpclaunch.errors import UsageError
from hpclaunch.jobreport.story import build_story, parse_log, parse_time, read_logs
from hpclaunch.machine.oom import counter_file, read_oom_kills
from hpclaunch.options import check_record_path
from hpclaunch.spawner.metrics import JobMetrics, exit_label
from hpclaunch.spawner.record import EventLog
from hpclaunch.spawner.usage import NodeUsage, WorkerUsage, launcher_clock, rank_ranges
from tests.recording import metric


@pytest.fixture(scope="module")
def event_log() -> Iterator[EventLog]:
    import hpclaunch

    with tempfile.TemporaryDirectory() as folder:
        plan = hpclaunch.plan(hpclaunch.detect_world({}, nproc_per_node=1), ["/bin/true"])
        log = EventLog(os.path.join(folder, "events.jsonl"), plan, launcher_clock())
        yield log
        log.close()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_event_times_are_iso_utc_with_microseconds(event_log: EventLog, wall: float) -> None:
    text = event_log.utc(wall)
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert 0 <= wall - parsed.timestamp() < 2e-6  # truncated to the microsecond
    assert abs(parse_time(text) - parsed.timestamp()) < 1e-6


@given(st.dictionaries(st.text(max_size=8), st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.lists(st.integers(), max_size=3)), max_size=6))
def test_any_fields_make_one_json_line(fields: dict) -> None:  # type: ignore[type-arg]
    """Whatever an emitter passes, the line is one line of JSON holding its fields (the
    header's names stay the header's)."""
    with tempfile.TemporaryDirectory() as folder:
        import hpclaunch

        plan = hpclaunch.plan(hpclaunch.detect_world({}, nproc_per_node=1), ["/bin/true"])
        log = EventLog(os.path.join(folder, "e.jsonl"), plan, launcher_clock())
        log.write("some_event", fields)
        log.close()
        data = Path(folder, "e.jsonl").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    line = json.loads(data)
    assert line["event"] == "some_event" and line["node_rank"] == 0
    for key, value in fields.items():
        if key not in ("schema", "event", "time", "elapsed", "run_id", "node_rank", "host"):
            if isinstance(value, float) and value != value:
                assert line[key] != line[key]  # NaN, as Python's json writes it
            else:
                assert line[key] == value


@given(st.sets(st.integers(min_value=0, max_value=300)))
def test_rank_ranges_expand_back_to_the_ranks(ranks: set) -> None:  # type: ignore[type-arg]
    text = rank_ranges(ranks)
    back = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        back.update(range(int(first), int(last or first) + 1))
    assert back == ranks


@given(st.text(min_size=1, max_size=30), st.integers(min_value=0, max_value=10**6))
def test_metrics_parse_with_any_run_id(run_id: str, node_rank: int) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = JobMetrics(run_id, node_rank, 1.75e9)
    metrics.observe("launch", {"ranks": [0, 1]})
    metrics.observe("worker_spawned", {"rank": 0, "pid": 10})
    metrics.observe("worker_spawned", {"rank": 1, "pid": 11})
    metrics.observe("worker_exit", {"rank": 1, "pid": 11, "exit_code": None,
                                    "signal": "SIGKILL", "oom_killed": True})
    text = metrics.render({0: 0.0})
    series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    labels = {"run_id": run_id, "node_rank": str(node_rank)}
    assert metric(series, "hpclaunch_workers_running", **labels) == 1
    assert metric(series, "hpclaunch_workers_planned", **labels) == 2
    assert metric(series, "hpclaunch_worker_exits_total", code="SIGKILL", **labels) == 1
    assert metric(series, "hpclaunch_worker_oom_kills_total", **labels) == 1
    assert metric(series, "hpclaunch_worker_last_progress_seconds", rank="0", **labels) >= 0
    assert metric(series, "hpclaunch_start_time_seconds", **labels) == 1.75e9


def test_exit_labels() -> None:
    assert [exit_label(0, None), exit_label(None, "SIGTERM"), exit_label(None, None)] == [
        "0", "SIGTERM", "unknown"]


def test_the_usage_line_groups_ranks_by_status() -> None:
    usage = NodeUsage([0, 1, 2, 3, 4])
    for rank in (0, 1, 2, 3):
        usage.start(rank)
    usage.add(WorkerUsage(1, 3, None, 1.5, 300 << 20))
    usage.add(WorkerUsage(0, None, 15, 0.25, 10 << 20))
    usage.add(WorkerUsage(2, None, 9, 0.25, 20 << 20, oom_killed=True))
    line = usage.summary(3, "n7", 75.0)
    assert line == (
        "node 3 (n7): rank 0 killed by SIGTERM; rank 1 exited 3; rank 2 killed by the OOM "
        "killer; rank 3 still running; rank 4 not started; wall 1m15s, CPU 2.0 s, "
        "peak RSS 300.0 MiB (rank 1)"
    )


def test_record_paths_name_only_known_fields() -> None:
    check_record_path("--event_log", "/x/{run_id}/{node_rank:04d}-{host}.jsonl")
    for bad in ("{nod}", "{host.real}", "{host[0]}", "{0}", "{}", "a{", "", "{node_rank!r}"):
        with pytest.raises(UsageError, match="--event_log"):
            check_record_path("--event_log", bad)


def _line(event: str, **fields: object) -> bytes:
    record = {"schema": 1, "event": event, "time": "2026-12-01T10:00:00.000000Z",
              "elapsed": 0.5, "run_id": "r", "node_rank": 0, "host": "h", **fields}
    return json.dumps(record).encode() + b"\n"


def test_a_cut_last_line_and_foreign_lines_are_said_not_fatal(tmp_path: Path) -> None:
    data = (_line("launch", ranks=[0], world={"nodes": 2, "hosts": ["h", "g"]})
            + b"not json\n" + _line("worker_spawned", rank=0, pid=5) + b'{"schema":1,"ev')
    runs, notes = parse_log("x.jsonl", data)
    assert runs is not None and len(runs) == 1 and len(runs[0].events) == 2
    assert any("1 line(s) that are not events" in n for n in notes)
    assert any("cut short" in n for n in notes)
    assert parse_log("other.txt", b"hello\nworld\n") == (None, [])
    (tmp_path / "node0.jsonl").write_bytes(data)
    (tmp_path / "README").write_text("not a log\n")
    story = build_story(read_logs([str(tmp_path)]))
    assert story["ignored"] == [str(tmp_path / "README")]
    assert story["nodes"]["missing"] == [{"node_rank": 1, "host": "g"}]
    assert story["nodes"]["log_stops_early"][0]["node_rank"] == 0
    assert story["outcome"] == "incomplete record"


def test_the_oom_counter_of_this_machine_is_readable() -> None:
    path, scope = counter_file()
    assert scope in ("cgroup", "machine") and os.path.exists(path)
    assert isinstance(read_oom_kills(path), int)
