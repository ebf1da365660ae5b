"""Signals as bytes on a pipe: handlers that cannot raise, and one place to wait for them.

Handlers do nothing in Python: the C-level handler writes the signal number to the wakeup
fd and the event loop reads it there. So a signal can never interrupt the launcher half-way
through bookkeeping (torch elastic's handlers raise from wherever the main thread is, and
lose the Popens already started).

:func:`hold_signals` is the launcher's first act (the CLI's entry point, and
:func:`hpclaunch.launch` for a program): from then on no handled signal can kill it or raise
a KeyboardInterrupt, whatever it is doing (importing, parsing, asking MPI for the world); a
signal that arrives before anything can act on it waits in the inbox until something does.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import AbstractSet, Dict, Iterable, List, Optional, Sequence, Tuple

FATAL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
HANDLED_SIGNALS = FATAL_SIGNALS + FORWARDED_SIGNALS + (signal.SIGCHLD,)


def _ignore(signum: int, frame: Optional[FrameType]) -> None:
    """Python-level no-op: the C handler has already written ``signum`` to the wakeup fd."""


class SignalInbox:
    """The launcher's handled signals, readable from :attr:`read_fd`."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = pipe_above_stdio()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._previous: Dict[int, object] = {}
        self._previous_fd = -1
        #: Signals read from the pipe but not yet taken by :meth:`drain` (see :meth:`fatal`).
        self.pending: List[int] = []
        #: The signal mask the launcher was started with: its workers start with it too,
        #: as they would under any other parent (the launcher itself unblocks what it handles).
        self.worker_mask: AbstractSet[int] = frozenset()

    def install(self) -> None:
        """Handle every signal in :data:`HANDLED_SIGNALS` through the pipe from now on.

        They are blocked while the handlers go in, so none can arrive between two of them
        and find its default action (SIGUSR1's kills), then unblocked: one that arrived
        meanwhile, or before (blocked by whoever started us), is delivered to the inbox.
        """
        self.worker_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        self._previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            self._previous[sig] = signal.signal(sig, _ignore)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def drain(self) -> List[int]:
        """Every signal received and not yet taken, in order of arrival."""
        received, self.pending = self.pending, []
        while True:
            try:
                data = os.read(self.read_fd, 512)
            except BlockingIOError:
                return received
            if not data:
                return received
            received.extend(data)

    def fatal(self) -> Optional[int]:
        """The first SIGINT/TERM/HUP received and not yet taken, leaving everything for
        :meth:`drain` (a forwarded signal must still reach the workers later)."""
        self.pending = self.drain()
        return next((sig for sig in self.pending if sig in FATAL_SIGNALS), None)

    def uninstall(self) -> None:
        """The handlers, wakeup fd and mask as they were before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_fd)
        set_mask(self.worker_mask)
        os.close(self.read_fd)
        os.close(self.write_fd)


def pipe_above_stdio() -> Tuple[int, int]:
    """A close-on-exec pipe whose ends are not fds 0-2, even where one of those is closed
    (``>&-``): the inbox is made before the launcher puts /dev/null there, and stdout must
    never be the signal pipe."""
    ends = os.pipe()
    if min(ends) > 2:
        return ends
    import fcntl

    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in ends)
    for fd in ends:
        os.close(fd)
    return moved[0], moved[1]


def hold_signals() -> SignalInbox:
    """A new, installed :class:`SignalInbox`: call it first, before anything can fail or take
    time; whoever calls it uninstalls it (or exits)."""
    inbox = SignalInbox()
    inbox.install()
    return inbox


def reset_in_child() -> None:
    """In a forked child before exec: default dispositions, no wakeup fd of the parent's.
    (SIGPIPE and SIGXFSZ, which Python ignores, are :func:`~hpclaunch.spawner.child.
    become_worker`'s to restore.)"""
    signal.set_wakeup_fd(-1)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def set_mask(mask: Iterable[int]) -> None:
    """Restore a signal mask returned by :func:`fork_with_signals_blocked`."""
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def fork_with_signals_blocked(
    close_on_error: Sequence[int],
) -> Tuple[int, AbstractSet[int]]:
    """``os.fork()`` with the handled signals blocked across it; returns (pid, old mask).

    A signal arriving between fork and exec would otherwise run the launcher's handler in
    the child and write to the launcher's wakeup fd. The parent restores the old mask; the
    child calls :func:`reset_in_child` and then restores it.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        set_mask(old_mask)
        for fd in close_on_error:
            os.close(fd)
        raise
    return pid, old_mask
