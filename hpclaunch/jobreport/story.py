"""A job's story from its nodes' event logs: read them, line them up in time, find the root cause.

Pure except for :func:`read_logs`: everything else works on the parsed lines, so the report
of a set of logs is the same wherever it is made. Lines are ordered by their wall time
(``time``, UTC): each node's clock is its own, so across nodes the order is as good as the
nodes' clock synchronisation (NTP/PTP keeps HPC nodes within milliseconds).

The root cause is the earliest *cause* on any node: a worker that failed while its node was
not already tearing down (its exit has ``during_teardown: false``), a stall, a fatal signal
from outside, a launch refused as bad input, or the scheduler's end of the step. A node whose
log stops without an ``end`` line lost its launcher (SIGKILL, the OOM killer, the node died):
that is said first, since its own cause may be missing from the record.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

#: The newest schema this reader knows (hpclaunch.spawner.record.SCHEMA_VERSION).
KNOWN_SCHEMA = 1

Event = Dict[str, Any]


def parse_time(text: str) -> float:
    """``2026-12-03T10:11:12.123456Z`` -> Unix time."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


class NodeRun:
    """One launcher's lines: from its ``launch`` to its ``end`` (or to where the log stops)."""

    def __init__(self, path: str, first: Event) -> None:
        self.path = path
        self.run_id = str(first.get("run_id", ""))
        self.node_rank = int(first.get("node_rank", -1))
        self.host = str(first.get("host", ""))
        self.events: List[Event] = []

    @property
    def launch(self) -> Optional[Event]:
        return next((e for e in self.events if e["event"] == "launch"), None)

    @property
    def end(self) -> Optional[Event]:
        return next((e for e in reversed(self.events) if e["event"] == "end"), None)

    @property
    def start(self) -> float:
        return float(self.events[0]["wall"])

    @property
    def last(self) -> float:
        return float(self.events[-1]["wall"])


class LogSet(NamedTuple):
    runs: List[NodeRun]
    #: Problems worth saying: unreadable files, lines that do not parse, a cut last line.
    problems: List[str]
    #: Files that are not hpclaunch event logs (skipped).
    ignored: List[str]


def log_files(sources: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(files to read, problems): a directory stands for the regular files in it."""
    files: List[str] = []
    problems: List[str] = []
    for source in sources:
        if os.path.isdir(source):
            names = sorted(os.listdir(source))
            files.extend(os.path.join(source, n) for n in names
                         if not n.startswith(".") and os.path.isfile(os.path.join(source, n)))
        elif os.path.isfile(source):
            files.append(source)
        else:
            problems.append(f"{source}: no such file or directory")
    return files, problems


def read_logs(sources: Sequence[str]) -> LogSet:
    files, problems = log_files(sources)
    runs: List[NodeRun] = []
    ignored: List[str] = []
    for path in files:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            problems.append(f"{path}: cannot read it ({exc.strerror})")
            continue
        found, notes = parse_log(path, data)
        if found is None:
            ignored.append(path)
            continue
        runs.extend(found)
        problems.extend(notes)
    return LogSet(runs, problems, ignored)


def parse_log(path: str, data: bytes) -> Tuple[Optional[List[NodeRun]], List[str]]:
    """The launches in one file (None: not an event log at all), and what was wrong in it."""
    runs: List[NodeRun] = []
    notes: List[str] = []
    lines = data.split(b"\n")
    cut = lines.pop()  # b"" when the file ends with a newline, as every whole line does
    bad = 0
    newer = False
    current: Dict[Tuple[str, int], NodeRun] = {}
    for raw in lines:
        if not raw.strip():
            continue
        try:
            event = json.loads(raw)
            event["wall"] = parse_time(event["time"])
            name = event["event"]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if not isinstance(event.get("schema"), int):
            bad += 1
            continue
        newer = newer or event["schema"] > KNOWN_SCHEMA
        key = (str(event.get("run_id", "")), int(event.get("node_rank", -1)))
        if name == "launch" or key not in current:
            current[key] = NodeRun(path, event)
            runs.append(current[key])
        current[key].events.append(event)
    if not runs:
        return None, []
    if bad:
        notes.append(f"{path}: {bad} line(s) that are not events were skipped")
    if cut.strip():
        notes.append(f"{path}: the last line is cut short (the writer was killed mid-write?)")
    if newer:
        notes.append(f"{path}: written by a newer hpclaunch (schema > {KNOWN_SCHEMA}): "
                     "fields this reader does not know are left out")
    return runs, notes


# --------------------------------------------------------------------------- the story


def describe_exit(event: Event) -> str:
    if event.get("oom_killed"):
        return f"was killed by {event.get('signal') or 'SIGKILL'}: the kernel's OOM killer"
    if event.get("signal"):
        return f"was killed by {event['signal']}"
    if event.get("exit_code") is not None:
        return f"exited with code {event['exit_code']}"
    return "ended (status unknown)"


def failed(event: Event) -> bool:
    return event["event"] == "worker_exit" and (
        bool(event.get("signal")) or event.get("exit_code") not in (0, None)
    )


def node_name(run: NodeRun) -> str:
    return f"node {run.node_rank} ({run.host})" if run.host else f"node {run.node_rank}"


def cause_of(event: Event, run: NodeRun) -> Optional[str]:
    """What this line says went wrong first-hand, if it is a cause (None: not one)."""
    name, where = event["event"], node_name(run)
    if failed(event) and not event.get("during_teardown"):
        return f"rank {event.get('rank')} on {where} {describe_exit(event)}"
    if name == "stall":
        ranks = ",".join(str(r) for r in event.get("ranks", ()))
        quiet = event.get("quiet_seconds")
        after = f" for {quiet:g} s" if isinstance(quiet, (int, float)) else ""
        return f"rank(s) {ranks} on {where} stalled (no progress{after})"
    if name == "signal" and event.get("action") == "teardown":
        return (f"{where} got {event.get('signal')} from outside (scancel, the time limit, "
                "pre-emption or a user)")
    if name == "scheduler_end" and event.get("action") == "ended":
        rank = event.get("failed_rank")
        after = f" after rank {rank} failed" if rank is not None else ""
        return f"the scheduler ended the step on {where}{after}"
    if name == "end" and event.get("exit_status") == 2 and event.get("error"):
        return f"{where} refused to start: {event['error']}"
    return None


def followed(event: Event, run: NodeRun) -> Optional[str]:
    """A line for "what followed", or None for lines not worth one."""
    name, where = event["event"], node_name(run)
    if name == "worker_exit" and (failed(event) or event.get("during_teardown")):
        how = describe_exit(event)
        during = " (teardown)" if event.get("during_teardown") else ""
        return f"{where}: rank {event.get('rank')} {how}{during}"
    if name == "teardown":
        why = event.get("reason", "?")
        if why == "worker_failed":
            why = f"rank {event.get('rank')} failed"
        elif why == "signal":
            why = f"got {event.get('signal')}"
        return (f"{where}: teardown ({why}): {event.get('sigterm', 0)} SIGTERMed, "
                f"{event.get('sigkill', 0)} SIGKILLed, {event.get('seconds', 0):.2f} s")
    if name == "signal":
        return f"{where}: got {event.get('signal')} from outside ({event.get('action')})"
    if name == "restart":
        return (f"{where}: the worker group restarts (round {event.get('round', '?')}, "
                f"{event.get('reason', 'restart')})")
    if name in ("stall", "dump", "scheduler_end", "output_dropped"):
        detail = {k: v for k, v in event.items() if k not in HEADER}
        return f"{where}: {name} {json.dumps(detail, separators=(',', ':'))}"
    if name == "end":
        return f"{where}: launcher ended, exit {event.get('exit_status')}"
    return None


HEADER = ("schema", "event", "time", "elapsed", "run_id", "node_rank", "host", "wall")


def pick_run(runs: Sequence[NodeRun], run_id: Optional[str]) -> Tuple[List[NodeRun], List[str]]:
    """The node runs of ``run_id`` (default: the run launched last), one per node (the last
    launch of a node that launched twice), and notes on what was left out."""
    notes: List[str] = []
    ids = sorted({r.run_id for r in runs}, key=lambda i: max(r.start for r in runs
                                                              if r.run_id == i))
    if not ids:
        return [], notes
    chosen = run_id if run_id is not None else ids[-1]
    if len(ids) > 1 and run_id is None:
        others = ", ".join(i for i in ids if i != chosen)
        notes.append(f"the logs also hold run(s) {others}: pick one with --run_id")
    by_node: Dict[int, NodeRun] = {}
    for run in sorted((r for r in runs if r.run_id == chosen), key=lambda r: r.start):
        if run.node_rank in by_node:
            notes.append(f"node {run.node_rank} launched more than once in run {chosen}: "
                         "the last launch is shown")
        by_node[run.node_rank] = run
    return [by_node[n] for n in sorted(by_node)], notes


def build_story(logs: LogSet, run_id: Optional[str] = None, most: int = 40) -> Dict[str, Any]:
    """The job's story as plain data (what ``--json`` prints and the text report renders)."""
    runs, notes = pick_run(logs.runs, run_id)
    story: Dict[str, Any] = {"run_id": run_id, "problems": list(logs.problems) + notes,
                             "ignored": list(logs.ignored)}
    if not runs:
        story["problems"].append("no hpclaunch event log found" +
                                 (f" for run {run_id}" if run_id else ""))
        return story
    launch = next((r.launch for r in runs if r.launch), None) or {}
    world = launch.get("world", {})
    expected = int(world.get("nodes", 0) or 0) or max(r.node_rank for r in runs) + 1
    hosts = world.get("hosts") or []
    found = {r.node_rank for r in runs}
    missing = [{"node_rank": n, "host": hosts[n] if n < len(hosts) else None}
               for n in range(expected) if n not in found]
    start = min(r.start for r in runs)
    statuses = [int(r.end.get("exit_status", 1)) for r in runs if r.end]
    cut_short = [r for r in runs if r.end is None]
    if missing or cut_short:
        outcome = "incomplete record"
    else:
        outcome = "succeeded" if all(s == 0 for s in statuses) else "failed"
    timeline = sorted(((e, r) for r in runs for e in r.events), key=lambda pair: pair[0]["wall"])
    root: Optional[Dict[str, Any]] = None
    for event, run in timeline:
        what = cause_of(event, run)
        if what is not None:
            root = _line(event, run, start, what)
            if event["event"] == "worker_exit":
                root.update({k: event.get(k) for k in ("rank", "exit_code", "signal",
                                                       "oom_killed", "cpu_seconds",
                                                       "peak_rss_bytes")})
            break
    after = root["wall"] if root else start
    cause_event = root["_event"] if root else None
    chain = []
    for event, run in timeline:
        if event["wall"] < after or event is cause_event:
            continue
        what = followed(event, run)
        if what is not None:
            chain.append(_line(event, run, start, what))
    story.update({
        "run_id": runs[0].run_id,
        "adapter": launch.get("adapter"),
        "world_size": world.get("world_size"),
        "nodes": {"expected": expected, "found": sorted(found), "missing": missing,
                  "log_stops_early": [{"node_rank": r.node_rank, "host": r.host,
                                       "last_event": r.events[-1]["event"],
                                       "last_time": iso(r.last)} for r in cut_short]},
        "start": iso(start),
        "seconds": round(max(r.last for r in runs) - start, 6),
        "outcome": outcome,
        "exit_status": _job_status(runs, root),
        "root_cause": _public(root),
        "followed": [_public(line) for line in chain[:most]],
        "followed_left_out": max(0, len(chain) - most),
        "signals": [_public(_line(e, r, start, f"{node_name(r)}: {e.get('signal')} "
                                               f"({e.get('action')})"))
                    for e, r in timeline if e["event"] == "signal"],
        "stalls": [_public(_line(e, r, start, cause_of(e, r) or "stall"))
                   for e, r in timeline if e["event"] == "stall"],
        "dumps": [_public(_line(e, r, start, f"{node_name(r)}: stacks of rank(s) "
                                             f"{_ranks(e.get('ranks'))} ({e.get('reason')})"))
                  for e, r in timeline if e["event"] == "dump"],
        "per_node": [node_summary(r) for r in runs],
    })
    story["peaks"] = peaks(story["per_node"])
    return story


def _job_status(runs: Sequence[NodeRun], root: Optional[Dict[str, Any]]) -> Optional[int]:
    """The job's exit status: that of the node where the root cause is, if it failed; else
    the first failing node's; 0 when every node ended 0; None when no node ended."""
    ends = {r.node_rank: int(r.end.get("exit_status", 1)) for r in runs if r.end}
    if root is not None and ends.get(root["node_rank"]):
        return ends[root["node_rank"]]
    failing = [status for _, status in sorted(ends.items()) if status != 0]
    return failing[0] if failing else (0 if ends else None)


def _ranks(ranks: Any) -> str:
    return ",".join(str(r) for r in ranks) if isinstance(ranks, list) else str(ranks)


def _line(event: Event, run: NodeRun, start: float, what: str) -> Dict[str, Any]:
    return {"time": iso(event["wall"]), "offset": round(event["wall"] - start, 6),
            "node_rank": run.node_rank, "host": run.host, "event": event["event"],
            "what": what, "wall": event["wall"], "_event": event}


def _public(line: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if line is None:
        return None
    return {k: v for k, v in line.items() if not k.startswith("_") and k != "wall"}


def node_summary(run: NodeRun) -> Dict[str, Any]:
    """One node's outcome and what its workers used, from its own lines."""
    end = run.end
    launch = run.launch or {}
    exits = [e for e in run.events if e["event"] == "worker_exit"]
    last: Dict[Any, Event] = {e.get("rank"): e for e in exits}
    statuses: Dict[str, List[Any]] = {}
    for rank, event in sorted(last.items(), key=lambda item: str(item[0])):
        statuses.setdefault(_short_status(event), []).append(rank)
    cpu = [e["cpu_seconds"] for e in exits if isinstance(e.get("cpu_seconds"), (int, float))]
    peak = max((e for e in exits if isinstance(e.get("peak_rss_bytes"), int)),
               key=lambda e: e["peak_rss_bytes"], default=None)
    return {
        "node_rank": run.node_rank,
        "host": run.host,
        "log": run.path,
        "ranks": launch.get("ranks", sorted(r for r in last if isinstance(r, int))),
        "exit_status": end.get("exit_status") if end else None,
        "ended": end is not None,
        "cause": end.get("cause") if end else None,
        "seconds": end.get("seconds") if end else round(run.last - run.start, 6),
        "statuses": statuses,
        "restarts": sum(1 for e in run.events if e["event"] == "restart"),
        "cpu_seconds": round(sum(cpu), 6) if cpu else None,
        "peak_rss_bytes": peak["peak_rss_bytes"] if peak else None,
        "peak_rank": peak.get("rank") if peak else None,
    }


def _short_status(event: Event) -> str:
    if event.get("oom_killed"):
        return "OOM-killed"
    if event.get("signal"):
        return f"killed by {event['signal']}"
    if event.get("exit_code") is not None:
        return f"exited {event['exit_code']}"
    return "unknown"


def peaks(nodes: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    nodes = list(nodes)
    top = max((n for n in nodes if n["peak_rss_bytes"] is not None),
              key=lambda n: n["peak_rss_bytes"], default=None)
    cpu = [n["cpu_seconds"] for n in nodes if n["cpu_seconds"] is not None]
    return {
        "peak_rss_bytes": top["peak_rss_bytes"] if top else None,
        "peak_rank": top["peak_rank"] if top else None,
        "peak_node_rank": top["node_rank"] if top else None,
        "cpu_seconds": round(sum(cpu), 6) if cpu else None,
    }


__all__ = ["KNOWN_SCHEMA", "LogSet", "NodeRun", "build_story", "parse_log", "parse_time",
           "read_logs"]
