"""The launcher's first act: hold its signals, before anything else is imported.

A signal that arrives before a Python program has handlers for it has its default effect:
SIGINT raises KeyboardInterrupt wherever the interpreter is (a traceback from an import),
SIGUSR1 and SIGTERM kill. So the entry points (``hpclaunch``, ``python -m hpclaunch``,
``hpclaunch-torchrun``) call :func:`hold` on their first line, and this module imports
nothing that is not loaded at start-up already (``_signal`` is built into the interpreter;
``signal``'s enums cost milliseconds of the window it would leave). The first thing
:func:`hold` does is block the signals; then it points them at a pipe
(:class:`hpclaunch.spawner.inbox.SignalInbox` reads it) and unblocks them: one that arrived
meanwhile is delivered there, none finds its default action. Only the interpreter's own
start-up, before hpclaunch's first line, is left (docs/cli.md, Signals).
"""

from __future__ import annotations

import _signal
import os

#: Stop (SIGINT, SIGTERM, SIGHUP), forwarded (SIGUSR1, SIGUSR2), stack dumps (SIGQUIT),
#: and SIGCHLD.
HELD_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGUSR1,
                _signal.SIGUSR2, _signal.SIGQUIT, _signal.SIGCHLD)


def _ignore(signum: int, frame: object) -> None:
    """Python-level no-op: the C handler has already written ``signum`` to the wakeup fd."""


class Held:
    """Held signals: the pipe they arrive on, and what :meth:`release` restores."""

    __slots__ = ("read_fd", "write_fd", "mask", "previous", "previous_fd")

    def __init__(self, read_fd: int, write_fd: int, mask: set[int],
                 previous: dict[int, object], previous_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        #: The signal mask the process had before: its workers start with it.
        self.mask = mask
        self.previous = previous
        self.previous_fd = previous_fd

    def release(self) -> None:
        """The handlers, wakeup fd and mask as they were before :func:`hold`; the pipe closed."""
        for sig, handler in self.previous.items():
            _signal.signal(sig, handler)
        _signal.set_wakeup_fd(self.previous_fd)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, self.mask)
        os.close(self.read_fd)
        os.close(self.write_fd)


def hold() -> Held:
    """Block the handled signals, route them to a pipe, unblock them."""
    mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, HELD_SIGNALS)
    read_fd, write_fd = _pipe_above_stdio()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_fd = _signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {sig: _signal.signal(sig, _ignore) for sig in HELD_SIGNALS}
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, HELD_SIGNALS)
    return Held(read_fd, write_fd, mask, previous, previous_fd)


def _pipe_above_stdio() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are not fds 0-2, even where one of those is closed
    (``>&-``): the signals are held before /dev/null fills a closed one, and stdout must
    never be the signal pipe."""
    ends = os.pipe()
    if min(ends) > 2:
        return ends
    import fcntl  # the signals are blocked by now: its load costs no window

    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in ends)
    for fd in ends:
        os.close(fd)
    return moved[0], moved[1]
