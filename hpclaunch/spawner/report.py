"""The result of a launch and the summary a user reads when a worker fails.

Policy (torch elastic's "all or nothing"): the launch succeeds if and only if every local
worker exits 0. The *first* failure seen is the root cause; workers that die because we
tore them down afterwards are consequences and are not reported as failures.
"""

from __future__ import annotations

import re
from typing import List, NamedTuple, Optional, Sequence, Tuple

from hpclaunch.spawner.logs import tail_lines


class WorkerFailure(NamedTuple):
    rank: int
    local_rank: int
    host: str
    pid: int
    exit_code: Optional[int] = None  # set when it exited
    signal: Optional[int] = None  # set when a signal killed it
    log_path: Optional[str] = None
    detail: str = ""  # e.g. why exec failed
    #: Its last lines as the relay saw them (console output, shown or filtered).
    output_tail: Tuple[str, ...] = ()
    #: What it used (from wait4; None: not known) and whether the kernel's OOM killer ended it.
    cpu_seconds: Optional[float] = None
    peak_rss: Optional[int] = None
    oom_killed: bool = False
    #: Why its per-rank log stopped before its output did (the file system refused a
    #: write); "" while the log holds all of it.
    log_incomplete: str = ""

    @property
    def status(self) -> int:
        """The launcher's exit status for this failure (contract: c, or 128+s)."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code else 1

    def describe(self) -> str:
        if self.signal is not None:
            from hpclaunch.spawner.usage import signal_name

            name = signal_name(self.signal)
            how = f"was killed by {name} ({self.signal})"
            if self.oom_killed:
                how += ": the kernel's OOM killer ended it (out of memory)"
        else:
            how = f"exited with code {self.exit_code}"
        who = f"rank {self.rank} (local_rank {self.local_rank}, pid {self.pid})"
        return f"{who} on {self.host} {how}"


class Outcome(NamedTuple):
    """What happened: exit status plus its cause, the same shape in static and elastic mode.

    The cause is a worker's ``failure``, a ``fatal_signal`` the launcher got, or, when neither
    explains a non-zero status (elastic mode's agent failed: a rendezvous timeout, say),
    ``error``: one line for the user, without the ``hpclaunch:`` prefix.
    """

    exit_code: int
    failure: Optional[WorkerFailure] = None
    fatal_signal: Optional[int] = None
    leftovers_killed: int = 0
    error: str = ""


#: argparse's (and click's) refusal of DeepSpeed's ``--local_rank=N``, as a script written
#: for torchrun prints it: "error: unrecognized arguments: --local_rank=3".
#: (A pattern string: ``re`` compiles it when a failure is summarised, not at every start.)
_REFUSED_LOCAL_RANK = (
    r"(unrecognized arguments|no such option|unexpected extra argument).*--local[_-]rank"
)


def refuses_local_rank(lines: Sequence[str]) -> bool:
    return any(re.search(_REFUSED_LOCAL_RANK, line) for line in lines)


def resources_line(failure: WorkerFailure) -> str:
    """``used: peak RSS 1.2 GiB, CPU 3.4 s`` (what is known), with the OOM killer's hint."""
    from hpclaunch.spawner.usage import format_bytes, format_seconds

    parts = []
    if failure.peak_rss is not None:
        parts.append(f"peak RSS {format_bytes(failure.peak_rss)}")
    if failure.cpu_seconds is not None:
        parts.append(f"CPU {format_seconds(failure.cpu_seconds)} (user+system)")
    text = f"used: {', '.join(parts)}" if parts else ""
    if failure.oom_killed:
        text += ("; " if text else "") + (
            "its memory limit (cgroup or machine) was reached: give it more memory or make it "
            "use less"
        )
    return text


def failure_summary(failure: WorkerFailure, tail: int = 20) -> List[str]:
    """Lines for the reporter: what failed, where its output went, and its last lines.

    Continuation lines start with blank space; quoted output with four spaces.
    """
    lines = [f"worker failed: {failure.describe()}"]
    if failure.detail:
        lines.append(f"  {failure.detail}")
    used = resources_line(failure)
    if used:
        lines.append(f"  {used}")
    if failure.log_path is not None and not failure.log_incomplete:
        lines.append(f"  log: {failure.log_path}")
        last = tail_lines(failure.log_path, tail)
        where = "the log"
    elif failure.log_path is not None:
        lines.append(f"  log: {failure.log_path} is incomplete ({failure.log_incomplete}); "
                     "the rest of its output went to this console")
        last = list(failure.output_tail[-tail:])
        where = "its output"
    else:
        last = list(failure.output_tail[-tail:])
        where = "its output"
        if not last:
            lines.append("  its output went to this console (above)")
    if last:
        lines.append(f"  last {len(last)} line(s) of {where}:")
        lines.extend(f"    {line}" for line in last)
        if refuses_local_rank(last):
            lines.append(
                "  hint: the script's argument parser refuses DeepSpeed's --local_rank=N "
                "(scripts written for torchrun read LOCAL_RANK from the environment): "
                "run hpclaunch with --no_local_rank"
            )
    return lines
