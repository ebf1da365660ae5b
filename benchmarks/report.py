"""Statistics, the markdown table, the targets verdict and the PNG plot.

Medians and min/max rather than means and standard deviations: on a 2-core machine shared
with other jobs the distribution has a long right tail, and the median is what a user sees
on a typical run while min/max show the spread honestly.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks.scenarios import Sample

COLUMNS = ("hpclaunch", "torchrun", "deepspeed", "floor")
HEADERS = ("hpclaunch", "torchrun", "DeepSpeed launch.py", "floor")


@dataclass
class Stats:
    """Summary of one metric over the samples of one case."""

    values: List[float]
    rcs: List[Optional[int]]
    survivors: List[int]
    errors: List[str]

    @property
    def ok(self) -> bool:
        return bool(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def summarise(samples: Sequence[Sample], metric: str) -> Stats:
    """``metric`` is ``value``, ``survivors`` or a key of ``Sample.extra``."""
    values: List[float] = []
    errors: List[str] = []
    for sample in samples:
        if sample.error:
            errors.append(sample.error)
            continue
        if metric == "value":
            got: Optional[float] = sample.value
        elif metric == "survivors":
            got = None if sample.survivors is None else float(sample.survivors)
        else:
            got = sample.extra.get(metric)
        if got is not None:
            values.append(got)
    return Stats(
        values=values,
        rcs=[s.rc for s in samples if not s.error],
        survivors=[s.survivors for s in samples if s.survivors is not None and not s.error],
        errors=errors,
    )


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        if value < 1.0:
            return f"{value * 1000:.1f} ms" if value < 0.1 else f"{value * 1000:.0f} ms"
        return f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "B":
        return f"{value:.1f} B"
    return f"{value:g}"


def fmt_range(stats: Stats, unit: str) -> str:
    if unit == "count":
        low, high = int(stats.low), int(stats.high)
        return f"{int(stats.median)}" + ("" if low == high else f" ({low}–{high})")
    head = fmt(stats.median, unit)
    if len(stats.values) == 1:
        return head
    return f"{head} ({fmt(stats.low, unit)}–{fmt(stats.high, unit)})"


@dataclass
class Row:
    """One table row: which case and metric fill each column, and how to judge it."""

    group: int
    label: str
    unit: str
    cells: Dict[str, Tuple[str, str]]  # column -> (case key, metric)
    floor_name: str = ""
    target: str = ""
    judge: Optional[Callable[[Results], Tuple[Optional[bool], str]]] = None
    show_exit: bool = False
    show_survivors: bool = False
    fixed: Dict[str, str] = field(default_factory=dict)  # column -> text (n/a ...)
    #: (metric, unit, prefix): a second figure of the same samples, shown after the first
    note: Optional[Tuple[str, str, str]] = None


@dataclass
class Results:
    """All samples by case key, plus why a case was skipped."""

    samples: Dict[str, List[Sample]]
    skipped: Dict[str, str]

    def stats(self, key: str, metric: str) -> Optional[Stats]:
        if key in self.skipped or key not in self.samples:
            return None
        stats = summarise(self.samples[key], metric)
        return stats if stats.ok else None

    def median(self, key: str, metric: str = "value") -> Optional[float]:
        stats = self.stats(key, metric)
        return stats.median if stats else None


def cell(results: Results, row: Row, column: str) -> str:
    if column in row.fixed:
        return row.fixed[column]
    if column not in row.cells:
        return "—"
    key, metric = row.cells[column]
    if key in results.skipped:
        return f"skipped: {results.skipped[key]}"
    samples = results.samples.get(key, [])
    stats = summarise(samples, metric)
    if not stats.ok:
        first = stats.errors[0] if stats.errors else "no sample"
        return f"ERROR: {first[:120]}".replace("|", "/")
    text = fmt_range(stats, row.unit)
    notes = []
    if row.show_exit:
        codes = sorted({rc for rc in stats.rcs if rc is not None})
        notes.append("exit " + "/".join(str(c) for c in codes))
    if row.show_survivors and stats.survivors:
        notes.append(f"{max(stats.survivors)} left")
    if row.note is not None:
        metric2, unit2, prefix = row.note
        second = summarise(samples, metric2)
        if second.ok:
            notes.append(f"{prefix} {fmt(second.median, unit2)}")
    if stats.errors:
        notes.append(f"{len(stats.errors)} failed run(s)")
    if column == "floor" and row.floor_name:
        text = f"{row.floor_name}: {text}"
    return text + (f"; {', '.join(notes)}" if notes else "")


def verdict(results: Results, row: Row) -> Tuple[Optional[bool], str]:
    if row.judge is None:
        return None, row.target
    return row.judge(results)


def table(results: Results, rows: Sequence[Row]) -> str:
    head = "| # | measurement | " + " | ".join(HEADERS) + " | target (hpclaunch) |"
    lines = [head, "|" + "---|" * (len(HEADERS) + 3)]
    for row in rows:
        met, text = verdict(results, row)
        mark = "" if met is None else (" ✅" if met else " ❌")
        cells = " | ".join(cell(results, row, column) for column in COLUMNS)
        lines.append(f"| {row.group} | {row.label} | {cells} | {text}{mark} |")
    return "\n".join(lines)


def plot(results: Results, series: Dict[str, Dict[str, List[Tuple[int, str]]]],
         bars: Dict[str, List[Tuple[str, str, str]]], title: str, path: Path,
         targets: Optional[Dict[str, List[Tuple[float, str]]]] = None) -> Optional[str]:
    """Write the PNG; returns why not when matplotlib is missing (it is an optional extra).

    ``series``: panel -> column -> [(workers, case key)] for line panels; ``bars``: panel ->
    [(label, case key, metric)] for bar panels; ``targets``: panel -> dashed lines to draw.
    """
    targets = targets or {}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install -e '.[bench]'): no plot"
    panels = len(series) + len(bars)
    cols = 2
    rows = (panels + 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 4.6 * rows))
    flat = list(axes.flat)
    index = 0
    for name, lines in series.items():
        ax = flat[index]
        index += 1
        for column, points in lines.items():
            xs, ys, lo, hi = [], [], [], []
            for workers, key in points:
                stats = results.stats(key, "value")
                if stats is None:
                    continue
                xs.append(workers)
                ys.append(stats.median)
                lo.append(stats.median - stats.low)
                hi.append(stats.high - stats.median)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=column)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(name.rsplit("x: ", 1)[-1].rstrip(")") if "x: " in name else "workers")
        ax.set_ylabel("seconds (median, min–max)")
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ticks = sorted({n for points in lines.values() for n, _ in points})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(n) for n in ticks])
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for name, items in bars.items():
        ax = flat[index]
        index += 1
        labels, ys, lo, hi = [], [], [], []
        for label, key, metric in items:
            stats = results.stats(key, metric)
            if stats is None:
                continue
            labels.append(label)
            ys.append(max(stats.median, 1e-4))
            lo.append(stats.median - stats.low)
            hi.append(stats.high - stats.median)
        ax.set_yscale("log")  # before drawing: bars and limits are then computed in log space
        drawn = ax.bar(range(len(ys)), ys, yerr=[lo, hi], capsize=3,
                       color=["C0" if lab.startswith("hpclaunch") else "C7" for lab in labels])
        unit = "MiB" if "RSS" in name else "s"
        ax.bar_label(drawn, labels=[f"{y:.3g} {unit}" for y in ys], fontsize=7, padding=2)
        lines = targets.get(name, [])
        for value, text in lines:
            ax.axhline(value, color="C3", linestyle="--", linewidth=1)
            ax.text(0.01, value, text, transform=ax.get_yaxis_transform(), color="C3",
                    fontsize=7, ha="left", va="bottom")
        if ys:
            marks = ys + [value for value, _ in lines]
            tops = [y + h for y, h in zip(ys, hi)] + [value for value, _ in lines]
            ax.set_ylim(min(marks) / 2, max(tops) * 3)
        ax.set_xticks(range(len(ys)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylabel("MiB" if "RSS" in name else "seconds")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    for ax in flat[index:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
