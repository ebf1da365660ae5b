"""Signals as bytes on a pipe: handlers that cannot raise, and one place to wait for them.

Handlers do nothing in Python: the C-level handler writes the signal number to the wakeup
fd and the event loop reads it there. So a signal can never interrupt the launcher half-way
through bookkeeping (torch elastic's handlers raise from wherever the main thread is, and
lose the Popens already started).

:func:`hpclaunch.hold.hold` is the launcher's first act (the entry points'; :func:`hold_signals`
for :func:`hpclaunch.launch` from a program): from then on no handled signal can kill it or
raise a KeyboardInterrupt, whatever it is doing (importing, parsing, asking MPI for the
world); a signal that arrives before anything can act on it waits in the inbox until
something does.
"""

from __future__ import annotations

import os
import signal
from typing import AbstractSet, Iterable, List, Optional, Sequence, Tuple

from hpclaunch.fast import csignal
from hpclaunch.hold import Held, hold

FATAL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
#: Ctrl-\ on a terminal, ``scancel --signal=QUIT``: every rank's stack (the job goes on).
DUMP_SIGNALS = (signal.SIGQUIT,)
#: The same as :data:`hpclaunch.hold.HELD_SIGNALS` (which cannot use ``signal``'s enums).
HANDLED_SIGNALS = FATAL_SIGNALS + FORWARDED_SIGNALS + DUMP_SIGNALS + (signal.SIGCHLD,)
#: The same as plain numbers, and the constants, for :data:`hpclaunch.fast.csignal`.
_HANDLED_NUMBERS = tuple(int(sig) for sig in HANDLED_SIGNALS)
_SIG_DFL, _SIG_BLOCK, _SIG_SETMASK = (
    int(signal.SIG_DFL), int(signal.SIG_BLOCK), int(signal.SIG_SETMASK))


class SignalInbox:
    """The launcher's handled signals, readable from :attr:`read_fd`.

    Made from signals already held (:func:`hpclaunch.hold.hold`, the entry point's first
    line), or, by :func:`hold_signals`, held now.
    """

    def __init__(self, held: Held) -> None:
        self.held = held
        self.read_fd, self.write_fd = held.read_fd, held.write_fd
        #: Signals read from the pipe but not yet taken by :meth:`drain` (see :meth:`fatal`).
        self.pending: List[int] = []
        #: The signal mask the launcher was started with: its workers start with it too,
        #: as they would under any other parent (the launcher itself unblocks what it handles).
        self.worker_mask: AbstractSet[int] = held.mask

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
        """The handlers, wakeup fd and mask as they were before the signals were held."""
        self.held.release()


def hold_signals() -> SignalInbox:
    """Signals held now, in a new inbox: call it first, before anything can fail or take
    time; whoever calls it uninstalls it (or exits)."""
    return SignalInbox(hold())


def reset_in_child() -> None:
    """In a forked child before exec: default dispositions, no wakeup fd of the parent's.
    (SIGPIPE and SIGXFSZ, which Python ignores, are :func:`~hpclaunch.spawner.child.
    become_worker`'s to restore.)"""
    csignal.set_wakeup_fd(-1)
    for sig in _HANDLED_NUMBERS:
        csignal.signal(sig, _SIG_DFL)


def set_mask(mask: Iterable[int]) -> None:
    """Restore a signal mask returned by :func:`fork_with_signals_blocked`."""
    csignal.pthread_sigmask(_SIG_SETMASK, mask)


def fork_with_signals_blocked(
    close_on_error: Sequence[int],
) -> Tuple[int, AbstractSet[int]]:
    """``os.fork()`` with the handled signals blocked across it; returns (pid, old mask).

    A signal arriving between fork and exec would otherwise run the launcher's handler in
    the child and write to the launcher's wakeup fd. The parent restores the old mask; the
    child calls :func:`reset_in_child` and then restores it.
    """
    old_mask = csignal.pthread_sigmask(_SIG_BLOCK, _HANDLED_NUMBERS)
    try:
        pid = os.fork()
    except BaseException:
        set_mask(old_mask)
        for fd in close_on_error:
            os.close(fd)
        raise
    return pid, old_mask
