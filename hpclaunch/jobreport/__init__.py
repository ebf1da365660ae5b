"""``hpclaunch-report``: one job's story from every node's ``--event_log``.

    hpclaunch-report LOG_DIR                     # or the files: logs/*.jsonl
    hpclaunch-report LOG_DIR --svg timeline.svg  # and every rank's life as a picture
    hpclaunch-report LOG_DIR --json              # the same facts for scripts

It names the root cause (the first rank to fail, by time, across nodes; or the stall, the
signal from outside, the scheduler's end), what followed, stalls and stack dumps, signals,
each node's outcome and the resource peaks. A node whose log is missing, or stops without
an ``end`` line, is named. Exit status: 0 when a report was made (whatever the job's
outcome), 2 when no event log was found.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

from hpclaunch.jobreport.story import build_story, pick_run, read_logs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpclaunch-report",
        description="The story of one job from its nodes' hpclaunch --event_log files.",
        allow_abbrev=False,
    )
    parser.add_argument("sources", nargs="+", metavar="DIR_OR_FILE",
                        help="event log files, or directories holding them")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--svg", metavar="PATH", help="write the timeline picture to PATH")
    parser.add_argument("--run_id", "--run-id", default=None,
                        help="the run to report when the logs hold several (default: the last)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logs = read_logs(args.sources)
    story = build_story(logs, args.run_id)
    if "nodes" not in story:
        for problem in story["problems"]:
            print(f"hpclaunch-report: error: {problem}", file=sys.stderr)
        return 2
    if args.svg:
        from hpclaunch.jobreport.timeline import render_svg

        runs, _ = pick_run(logs.runs, args.run_id)
        try:
            with open(args.svg, "w", encoding="utf-8") as handle:
                handle.write(render_svg(runs, story))
        except OSError as exc:
            print(f"hpclaunch-report: error: cannot write {args.svg} ({exc.strerror})",
                  file=sys.stderr)
            return 2
        story["svg"] = args.svg
    if args.json:
        print(json.dumps(story, indent=1))
    else:
        print("\n".join(render_text(story)))
    return 0


def render_text(story: Dict[str, Any]) -> List[str]:
    from hpclaunch.spawner.usage import format_bytes, format_seconds

    nodes = story["nodes"]
    lines = [
        f"run {story['run_id']}: {len(nodes['found'])} of {nodes['expected']} node log(s), "
        f"{story.get('world_size')} rank(s), adapter {story.get('adapter')}",
        f"  started {story['start']}, lasted {format_seconds(story['seconds'])}; "
        f"outcome: {story['outcome']}"
        + (f" (exit {story['exit_status']})" if story.get("exit_status") else ""),
    ]
    for problem in story["problems"]:
        lines.append(f"  note: {problem}")
    for gone in nodes["missing"]:
        host = f" ({gone['host']})" if gone.get("host") else ""
        lines.append(f"  missing: no event log from node {gone['node_rank']}{host}")
    for stop in nodes["log_stops_early"]:
        lines.append(
            f"  warning: node {stop['node_rank']} ({stop['host']})'s log stops at "
            f"{stop['last_time']} ({stop['last_event']}) without an end: its launcher was killed "
            "(SIGKILL, the OOM killer, the node died), so its own cause may be missing"
        )
    root = story["root_cause"]
    lines.append("")
    if root is None:
        lines.append("root cause: none recorded" + (
            " (every node ended 0)" if story["outcome"] == "succeeded" else ""))
    elif story["outcome"] == "succeeded":
        lines.append(f"first failure (the job recovered from it): {root['what']}")
    else:
        lines.append(f"root cause: {root['what']}")
        lines.append(f"  at {root['time']} (+{format_seconds(root['offset'])} into the job)")
        used = []
        if root.get("peak_rss_bytes") is not None:
            used.append(f"peak RSS {format_bytes(root['peak_rss_bytes'])}")
        if root.get("cpu_seconds") is not None:
            used.append(f"CPU {format_seconds(root['cpu_seconds'])}")
        if used:
            lines.append(f"  used: {', '.join(used)}")
    if story["followed"]:
        lines.append("what followed:")
        for line in story["followed"]:
            lines.append(f"  {_offset(line['offset'])}  {line['what']}")
        if story["followed_left_out"]:
            lines.append(f"  ... and {story['followed_left_out']} more (--json has them all)")
    for title, key in (("signals", "signals"), ("stalls", "stalls"), ("stack dumps", "dumps")):
        items = story[key]
        lines.append(f"{title}: {'none' if not items else ''}".rstrip())
        for item in items:
            lines.append(f"  {_offset(item['offset'])}  {item['what']}")
    lines.append("per node:")
    for node in story["per_node"]:
        status = node["exit_status"] if node["ended"] else "no end (log stops)"
        statuses = "; ".join(
            f"{'rank' if len(v) == 1 else 'ranks'} {_ranks(v)} {k}"
            for k, v in node["statuses"].items()
        )
        used = []
        if node["cpu_seconds"] is not None:
            used.append(f"CPU {format_seconds(node['cpu_seconds'])}")
        if node["peak_rss_bytes"] is not None:
            used.append(f"peak RSS {format_bytes(node['peak_rss_bytes'])} "
                        f"(rank {node['peak_rank']})")
        if node["restarts"]:
            used.append(f"{node['restarts']} restart(s)")
        lines.append(
            f"  node {node['node_rank']} ({node['host']}): exit {status}, "
            f"{format_seconds(node['seconds'] or 0)}; {statuses or 'no worker exits'}"
            + (f"; {', '.join(used)}" if used else "")
        )
    peak = story["peaks"]
    if peak["peak_rss_bytes"] is not None or peak["cpu_seconds"] is not None:
        parts = []
        if peak["peak_rss_bytes"] is not None:
            parts.append(f"peak RSS {format_bytes(peak['peak_rss_bytes'])} (rank "
                         f"{peak['peak_rank']} on node {peak['peak_node_rank']})")
        if peak["cpu_seconds"] is not None:
            parts.append(f"CPU {format_seconds(peak['cpu_seconds'])} in all")
        lines.append(f"resources: {'; '.join(parts)}")
    if story.get("svg"):
        lines.append(f"timeline: {story['svg']}")
    return lines


def _offset(seconds: float) -> str:
    return f"{'+' + format(seconds, '.3f'):>10} s"


def _ranks(ranks: List[Any]) -> str:
    from hpclaunch.spawner.usage import rank_ranges

    if all(isinstance(r, int) for r in ranks):
        return rank_ranges(ranks)
    return ",".join(str(r) for r in ranks)


__all__ = ["main", "render_text"]
