"""Reading a launch's record the way its users do: every event-log line through ``json``,
the metrics file through prometheus_client's own text parser (a test dependency), and the
job report through the real ``python -m hpclaunch.report``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Tuple

from tests.conftest import Fifo

#: The header every event-log line starts with (docs/events.md), and its types.
HEADER = {"schema": int, "event": str, "time": str, "elapsed": float, "run_id": str,
          "node_rank": int, "host": str}
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")

Event = Dict[str, Any]
Series = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


def read_events(path: Path) -> List[Event]:
    """Every line of an event log, checked: whole (ends with a newline), JSON, the header
    with its types, UTC time with microseconds, ``elapsed`` never going back."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path}: the last line is not whole: {data[-200:]!r}"
    events = [json.loads(line) for line in data.decode().splitlines()]
    for event in events:
        for key, kind in HEADER.items():
            assert isinstance(event.get(key), kind), f"{key} of {event}"
        assert event["schema"] == 1
        assert ISO_UTC.match(event["time"]), event["time"]
    launches = [i for i, e in enumerate(events) if e["event"] == "launch"] + [len(events)]
    for begin, end in zip(launches, launches[1:]):
        elapsed = [e["elapsed"] for e in events[begin:end]]
        assert elapsed == sorted(elapsed) and elapsed[0] >= 0, elapsed
    return events


def wall(event: Event) -> float:
    """An event's ``time`` as Unix time, parsed independently of hpclaunch's own reader."""
    import calendar

    stamp = time.strptime(event["time"][:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(stamp) + float("0." + event["time"][20:26])


def named(events: List[Event], name: str) -> List[Event]:
    return [e for e in events if e["event"] == name]


def parse_metrics(path: Path) -> Series:
    """(sample name, labels) -> value, through prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    series: Series = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def metric(series: Series, name: str, **labels: str) -> float:
    """The one sample ``name`` whose labels include ``labels``."""
    hits = [v for (n, ls), v in series.items() if n == name and set(labels.items()) <= ls]
    assert len(hits) == 1, f"{name}{labels}: {hits} in {sorted(series)}"
    return hits[0]


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpclaunch.report", *args],
                          capture_output=True, text=True, timeout=120)


def report_json(*args: str) -> Dict[str, Any]:
    result = report("--json", *args)
    assert result.returncode == 0, result.stderr
    story: Dict[str, Any] = json.loads(result.stdout)
    return story


@contextmanager
def fifo_at(path: Path) -> Iterator[Fifo]:
    """A :class:`~tests.conftest.Fifo` closed on the way out (for more than one per test)."""
    channel = Fifo(path)
    try:
        yield channel
    finally:
        channel.close()
