"""The one voice of the launcher: every message a user reads from hpclaunch goes through here.

Adapters, the planner and the spawner never write to stderr themselves; they are handed a
:class:`Reporter` (the CLI makes one per run; :mod:`hpclaunch.api` makes one at info level
when a caller passes none), which filters by level (``--log_level``/``--quiet``) and writes
with ``os.write`` so that a closed, broken or vanished console (``2>&-``, ``| head -1``, a
dead ``tee``) costs the message, never the launch: the exit status and the teardown must not
depend on whether anyone reads the launcher's output.

Levels mean what they say: ``debug`` adds the plan and every signal sent; ``info`` is the
banner and what happens to the job; ``warning`` is something the user should act on although
the job went on; ``error`` is why the job failed.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, FrozenSet, Iterable, Optional

DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50

#: ``--log_level`` names, in the order ``--help`` lists them.
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}

#: Lines starting with this are quoted worker output and get no ``hpclaunch:`` prefix.
QUOTE = "    "

#: Where the bytes of one message go; must never raise and should never block for long.
Sink = Callable[[bytes], None]


def reopen_closed_standard_fds() -> FrozenSet[int]:
    """Open /dev/null on a closed fd 0, 1 or 2 (``2>&-``), first thing at start-up; returns
    the descriptors that were closed.

    Otherwise the next ``os.pipe()`` or ``open()`` lands on that number and a worker
    inherits, say, a relay pipe or another rank's log file as its stdout or stderr. The
    /dev/null stays open across exec: a worker started without fd 0, 1 or 2 would make the
    first file it opens its stdin, stdout or stderr (and C-level prints would go into it).
    """
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)  # inheritable, as dup2 makes it
                os.close(null)
            else:
                os.set_inheritable(fd, True)  # os.open is close-on-exec
    return frozenset(closed)


def stderr_sink(fd: int = 2) -> Sink:
    """Write to ``fd``; a closed or broken descriptor drops the message instead of raising.

    For fd 2 the bytes go through ``sys.stderr`` when there is one, so an in-process caller
    that redirected it (a test's capture, an embedding program) gets them there.
    """

    def write(data: bytes) -> None:
        stream = sys.stderr if fd == 2 else None
        if stream is not None:
            try:
                stream.write(data.decode(errors="replace"))
                stream.flush()
                return
            except (OSError, ValueError):  # broken pipe; or closed by its owner
                return
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except InterruptedError:
                continue
            except OSError:  # EBADF (2>&-), EPIPE (reader gone), EAGAIN on a full O_NONBLOCK fd
                return
            view = view[written:]

    return write


class Reporter:
    """Level-filtered, one-line-per-message output with the ``hpclaunch:`` prefix."""

    def __init__(self, level: int = INFO, sink: Optional[Sink] = None, color: bool = False) -> None:
        self.level = level
        self.sink: Sink = sink if sink is not None else stderr_sink()
        self.color = color

    def through(self, sink: Sink) -> Reporter:
        """The same voice (level, colour) writing to ``sink``: the console while workers run,
        so messages stay in order with their output."""
        return Reporter(self.level, sink, self.color)

    def enabled(self, level: int) -> bool:
        return level >= self.level

    def debug(self, message: str) -> None:
        self.emit(DEBUG, [message])

    def info(self, message: str) -> None:
        self.emit(INFO, [message])

    def warning(self, message: str) -> None:
        self.emit(WARNING, [f"warning: {message}"])

    def error(self, message: str) -> None:
        self.emit(ERROR, [f"error: {message}"])

    def emit(self, level: int, lines: Iterable[str], highlight: bool = False) -> None:
        """Write ``lines`` as one block (so other output cannot split it) if ``level`` is on.

        Each line gets the ``hpclaunch: `` prefix unless it starts with :data:`QUOTE` (a
        worker's own output quoted, e.g. a log tail); ``highlight`` makes the first line bold
        red on a colour console.
        """
        if not self.enabled(level):
            return
        text = [line if line.startswith(QUOTE) else f"hpclaunch: {line}" for line in lines]
        if not text:
            return
        if highlight and self.color:
            text[0] = f"\033[1;31m{text[0]}\033[0m"
        self.sink(("\n".join(text) + "\n").encode(errors="replace"))
