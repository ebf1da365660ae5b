"""The result of a launch and the summary a user reads when a worker fails.

Policy (torch elastic's "all or nothing"): the launch succeeds if and only if every local
worker exits 0. The *first* failure seen is the root cause; workers that die because we
tore them down afterwards are consequences and are not reported as failures.
"""

from __future__ import annotations

import signal
from typing import List, NamedTuple, Optional

from hpclaunch.spawner.files import tail_lines


class WorkerFailure(NamedTuple):
    rank: int
    local_rank: int
    host: str
    pid: int
    exit_code: Optional[int] = None  # set when it exited
    signal: Optional[int] = None  # set when a signal killed it
    log_path: Optional[str] = None
    detail: str = ""  # e.g. why exec failed

    @property
    def status(self) -> int:
        """The launcher's exit status for this failure (contract: c, or 128+s)."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code else 1

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            how = f"was killed by {name} ({self.signal})"
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


def failure_summary(failure: WorkerFailure, tail: int = 20) -> List[str]:
    """Lines for stderr: what failed, where its output went, and the end of that output."""
    lines = [f"hpclaunch: worker failed: {failure.describe()}"]
    if failure.detail:
        lines.append(f"hpclaunch:   {failure.detail}")
    if failure.log_path is not None:
        lines.append(f"hpclaunch:   log: {failure.log_path}")
        last = tail_lines(failure.log_path, tail)
        if last:
            lines.append(f"hpclaunch:   last {len(last)} line(s) of the log:")
            lines.extend(f"    {line}" for line in last)
    else:
        lines.append("hpclaunch:   its output went to this console (above)")
    return lines
