"""Error families.

Only ``cli.py`` turns these into the one-line ``hpclaunch: error: ...`` message and exit
status 2; everything below it raises, so that pure code stays testable and no traceback
ever reaches a user for bad input.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad invocation or bad input: exit status 2, nothing spawned.

    The message must say what is wrong *and* how to fix it, on one line.
    """


class WorldInfoError(UsageError):
    """``--world_info`` (or a World built from any source) is malformed."""


class HostlistError(UsageError):
    """A Slurm hostlist expression could not be expanded.

    ``part`` keeps the offending piece so the message can point at it.
    """

    def __init__(self, message: str, part: str = "") -> None:
        super().__init__(message)
        self.part = part


class AdapterError(UsageError):
    """An adapter could not derive a World from its environment."""


class SpawnError(UsageError):
    """Something the spawner must prepare before the first worker failed (log dir, PID file)."""


class OutputError(Exception):
    """The launcher's own stdout (``--dry-run``, ``--version``, ``--help``) could not take its
    output: one error line and exit status 1 (as coreutils' write errors), not 2: the
    invocation was fine."""
