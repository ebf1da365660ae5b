"""Signals as bytes on a pipe: handlers that cannot raise, and one place to wait for them.

Handlers are installed before anything is spawned and do nothing in Python: the C-level
handler writes the signal number to the wakeup fd and the event loop reads it there. So
a signal can never interrupt the launcher half-way through bookkeeping (torch elastic's
handlers raise from wherever the main thread is, and lose the Popens already started).
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import AbstractSet, Dict, Iterable, List, Optional, Sequence, Tuple

FATAL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
#: Ctrl-\ on a terminal, ``scancel --signal=QUIT``: every rank's stack (the job goes on).
DUMP_SIGNALS = (signal.SIGQUIT,)
HANDLED_SIGNALS = FATAL_SIGNALS + FORWARDED_SIGNALS + DUMP_SIGNALS + (signal.SIGCHLD,)


def _ignore(signum: int, frame: Optional[FrameType]) -> None:
    """Python-level no-op: the C handler has already written ``signum`` to the wakeup fd."""


class SignalInbox:
    """The launcher's handled signals, readable from :attr:`read_fd`."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._previous: Dict[int, object] = {}
        self._previous_fd = -1

    def install(self) -> None:
        self._previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            self._previous[sig] = signal.signal(sig, _ignore)

    def drain(self) -> List[int]:
        received: List[int] = []
        while True:
            try:
                data = os.read(self.read_fd, 512)
            except BlockingIOError:
                return received
            if not data:
                return received
            received.extend(data)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self.read_fd)
        os.close(self.write_fd)


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
