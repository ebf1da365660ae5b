"""The job's timeline as one SVG file: a row per rank, grouped by node, across the job's time.

Each worker's life is a bar from its spawn to its exit, coloured by how it ended; stalls,
stack dumps, restarts and signals are marks on it (every shape has a tooltip). Written as
plain SVG text: no plotting library, opens in any browser.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

from hpclaunch.jobreport.story import Event, NodeRun, describe_exit, iso

COLOURS = {
    "ok": "#2ca02c",
    "failed": "#d62728",
    "oom": "#ff7f0e",
    "teardown": "#8c8c8c",
    "open": "#c7c7c7",
}
LEGEND = (
    ("ok", "exited 0"),
    ("failed", "failed"),
    ("oom", "OOM-killed"),
    ("teardown", "stopped by teardown"),
    ("open", "no exit recorded"),
)
WIDTH, LEFT, RIGHT, TOP = 1100, 170, 24, 58


class Life(NamedTuple):
    node_rank: int
    rank: Any
    start: float
    end: Optional[float]
    kind: str
    tip: str


class Mark(NamedTuple):
    node_rank: int
    rank: Any  # None: the whole node
    wall: float
    kind: str
    tip: str
    label: str = ""


def _kind(exit_event: Event) -> str:
    if exit_event.get("oom_killed"):
        return "oom"
    if exit_event.get("signal") is None and exit_event.get("exit_code") == 0:
        return "ok"
    return "teardown" if exit_event.get("during_teardown") else "failed"


def lives_and_marks(runs: Sequence[NodeRun]) -> Tuple[List[Life], List[Mark]]:
    lives: List[Life] = []
    marks: List[Mark] = []
    for run in runs:
        open_: Dict[Any, Tuple[Any, float]] = {}
        for event in run.events:
            name, wall = event["event"], event["wall"]
            if name == "worker_spawned":
                open_[event.get("pid")] = (event.get("rank"), wall)
            elif name == "worker_exit":
                rank, began = open_.pop(event.get("pid"), (event.get("rank"), run.start))
                tip = (f"rank {rank} (node {run.node_rank}, pid {event.get('pid')}) "
                       f"{describe_exit(event)} at {iso(wall)}")
                lives.append(Life(run.node_rank, rank, began, wall, _kind(event), tip))
            elif name in ("stall", "dump"):
                for rank in event.get("ranks") or [None]:
                    detail = event.get("reason") or event.get("quiet_seconds", "")
                    marks.append(Mark(run.node_rank, rank, wall, name,
                                      f"{name} ({detail}) on node {run.node_rank} at {iso(wall)}"))
            elif name in ("restart", "signal"):
                label = str(event.get("signal") if name == "signal"
                            else f"restart {event.get('round', '')}")
                detail = event.get("action") or event.get("reason") or ""
                marks.append(Mark(run.node_rank, None, wall, name,
                                  f"{label} ({detail}) on node {run.node_rank} at {iso(wall)}",
                                  label))
        for pid, (rank, began) in open_.items():
            lives.append(Life(run.node_rank, rank, began, None, "open",
                              f"rank {rank} (node {run.node_rank}, pid {pid}): no exit recorded"))
    return lives, marks


def _ticks(span: float) -> Tuple[float, List[float]]:
    for step in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60,
                 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400):
        if span / step <= 10:
            break
    count = int(span / step) + 1
    return step, [i * step for i in range(count + 1) if i * step <= span * 1.0001]


def _label(seconds: float, step: float) -> str:
    if step >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s" if step >= 1 else f"{seconds:.3g} s"


def render_svg(runs: Sequence[NodeRun], story: Dict[str, Any]) -> str:
    lives, marks = lives_and_marks(runs)
    rows = sorted({(life.node_rank, life.rank) for life in lives}
                  | {(m.node_rank, m.rank) for m in marks if m.rank is not None},
                  key=lambda row: (row[0], str(type(row[1])), row[1]))
    for run in runs:  # a node with no worker still gets a row: its record exists
        if not any(row[0] == run.node_rank for row in rows):
            rows.append((run.node_rank, None))
    rows.sort(key=lambda row: (row[0], row[1] is None, str(row[1]).zfill(12)))
    index = {row: i for i, row in enumerate(rows)}
    row_h = max(3.0, min(18.0, 720.0 / max(1, len(rows))))
    plot_w = WIDTH - LEFT - RIGHT
    start = min(run.start for run in runs)
    finish = max(run.last for run in runs)
    span = max(finish - start, 1e-3)
    height = TOP + row_h * len(rows) + 70

    def x(wall: float) -> float:
        return LEFT + (wall - start) / span * plot_w

    def y(row: Tuple[int, Any]) -> float:
        return TOP + index[row] * row_h

    out: List[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height:.0f}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">hpclaunch timeline: run '
        f'{escape(str(story.get("run_id", "")))} ({escape(str(story.get("outcome", "")))})'
        "</text>",
        f'<text x="{LEFT}" y="34" fill="#555">{escape(_subtitle(story))}</text>',
    ]
    # node bands and labels
    for number, run in enumerate(runs):
        band = [row for row in rows if row[0] == run.node_rank]
        if not band:
            continue
        top, bottom = y(band[0]), y(band[-1]) + row_h
        fill = "#f4f4f4" if number % 2 == 0 else "#ffffff"
        out.append(f'<rect x="0" y="{top:.1f}" width="{WIDTH}" height="{bottom - top:.1f}" '
                   f'fill="{fill}"/>')
        ended = "" if run.end else " (log stops)"
        out.append(f'<text x="6" y="{top + min(12.0, row_h * len(band)):.1f}" '
                   f'font-weight="bold">{escape(f"node {run.node_rank} {run.host}{ended}")}'
                   "</text>")
        if row_h >= 9:
            for row in band:
                if row[1] is not None:
                    out.append(f'<text x="{LEFT - 6}" y="{y(row) + row_h * 0.75:.1f}" '
                               f'text-anchor="end" fill="#444">rank {escape(str(row[1]))}</text>')
    # time axis
    step, ticks = _ticks(span)
    axis_y = TOP + row_h * len(rows)
    for tick in ticks:
        tx = LEFT + tick / span * plot_w
        out.append(f'<line x1="{tx:.1f}" y1="{TOP - 4}" x2="{tx:.1f}" y2="{axis_y:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{tx:.1f}" y="{TOP - 8}" text-anchor="middle" fill="#555">'
                   f'{escape(_label(tick, step))}</text>')
    # lives
    for life in lives:
        top = y((life.node_rank, life.rank)) + row_h * 0.15
        x0, x1 = x(life.start), x(life.end if life.end is not None else finish)
        out.append(
            f'<rect x="{x0:.2f}" y="{top:.2f}" width="{max(1.0, x1 - x0):.2f}" '
            f'height="{row_h * 0.7:.2f}" fill="{COLOURS[life.kind]}"'
            + (' fill-opacity="0.6" stroke="#999" stroke-dasharray="3,2"'
               if life.kind == "open" else "")
            + f"><title>{escape(life.tip)}</title></rect>"
        )
    # marks
    for mark in marks:
        mx = x(mark.wall)
        if mark.rank is None:
            band = [row for row in rows if row[0] == mark.node_rank]
            top, bottom = y(band[0]), y(band[-1]) + row_h
            colour = "#1f77b4" if mark.kind == "restart" else "#9467bd"
            out.append(f'<line x1="{mx:.2f}" y1="{top:.1f}" x2="{mx:.2f}" y2="{bottom:.1f}" '
                       f'stroke="{colour}" stroke-width="2" stroke-dasharray="4,3">'
                       f"<title>{escape(mark.tip)}</title></line>")
            out.append(f'<text x="{mx + 3:.2f}" y="{top + 9:.1f}" font-size="9" '
                       f'fill="{colour}" stroke="white" stroke-width="3" paint-order="stroke">'
                       f"{escape(mark.label)}</text>")
            continue
        cy = y((mark.node_rank, mark.rank)) + row_h / 2
        r = max(3.0, row_h * 0.45)
        if mark.kind == "stall":
            points = f"{mx:.1f},{cy - r:.1f} {mx - r:.1f},{cy + r:.1f} {mx + r:.1f},{cy + r:.1f}"
            out.append(f'<polygon points="{points}" fill="#ffd700" stroke="#8a6d00">'
                       f"<title>{escape(mark.tip)}</title></polygon>")
        else:
            points = (f"{mx:.1f},{cy - r:.1f} {mx + r:.1f},{cy:.1f} {mx:.1f},{cy + r:.1f} "
                      f"{mx - r:.1f},{cy:.1f}")
            out.append(f'<polygon points="{points}" fill="#9467bd">'
                       f"<title>{escape(mark.tip)}</title></polygon>")
    # the root cause
    root = story.get("root_cause")
    if root:
        wall = start + float(root.get("offset", 0.0))
        row = (root.get("node_rank"), root.get("rank"))
        cy = (y(row) + row_h / 2) if row in index else TOP - 14
        out.append(f'<circle cx="{x(wall):.2f}" cy="{cy:.2f}" r="{max(5.0, row_h * 0.6):.1f}" '
                   'fill="none" stroke="black" stroke-width="2">'
                   f"<title>root cause: {escape(str(root.get('what')))}</title></circle>")
    # legend
    ly = axis_y + 24
    lx = float(LEFT)
    for kind, text in LEGEND:
        out.append(f'<rect x="{lx:.0f}" y="{ly - 9:.0f}" width="14" height="10" '
                   f'fill="{COLOURS[kind]}"/><text x="{lx + 18:.0f}" y="{ly:.0f}">{text}</text>')
        lx += 30 + 6.2 * len(text)
    extra = (("#ffd700", "stall ▲"), ("#9467bd", "stack dump ◆ / signal ┆"),
             ("#1f77b4", "restart ┆"), ("black", "root cause ○"))
    lx, ly = float(LEFT), ly + 18
    for colour, text in extra:
        out.append(f'<text x="{lx:.0f}" y="{ly:.0f}" fill="{colour}">{escape(text)}</text>')
        lx += 40 + 6.2 * len(text)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _subtitle(story: Dict[str, Any]) -> str:
    nodes = story.get("nodes", {})
    missing = nodes.get("missing", [])
    text = (f"{len(nodes.get('found', []))} of {nodes.get('expected', '?')} node log(s), "
            f"started {story.get('start', '?')}, {story.get('seconds', 0):.3g} s")
    if missing:
        text += "; no log from node(s) " + ",".join(str(m["node_rank"]) for m in missing)
    return text


__all__ = ["render_svg"]
