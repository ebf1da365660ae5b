"""What every launch, static or elastic, sets up before its first child and undoes after.

In order: signal handlers (so no signal is lost or kills us half-way; usually the caller's,
held since its first line), the check of an existing PID file, the watchdog (so a ``kill -9``
of the launcher still kills everything and removes the PID file), the PID file, then the
subreaper bit (after the watchdog, which must not be our child). Undone in reverse on every
exit path; the watchdog is told "done" only when the launch ended with nothing left running,
so any other exit -- an exception included -- makes it kill whatever carries the launch's
token.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import FrozenSet, Iterator, Optional

from hpclaunch.spawner import child, tree
from hpclaunch.spawner.inbox import SignalInbox, hold_signals


class LaunchGuard:
    """What a launch gets from :func:`launch_guard`; ``clean`` is the caller's to set."""

    def __init__(self, inbox: SignalInbox) -> None:
        self.inbox = inbox
        # os.urandom, not secrets: secrets loads OpenSSL, ~2.5 ms of every launch's start-up
        self.token = os.urandom(16).hex()
        self.watchdog = tree.Watchdog(-1)
        #: Set by the caller when the launch ended with no descendant left.
        self.clean = False
        #: Our own helpers that are our children (the watchdog, when we are PID 1).
        self.helpers: FrozenSet[int] = frozenset()


@contextmanager
def launch_guard(
    pid_file: Optional[str], inbox: Optional[SignalInbox] = None
) -> Iterator[LaunchGuard]:
    """``inbox``: signals the caller already holds (and uninstalls); else held here."""
    own_inbox = inbox is None
    if inbox is None:
        inbox = hold_signals()
    guard = LaunchGuard(inbox)
    pid_written = False
    adopted = False
    watchdog: Optional[tree.Watchdog] = None
    try:
        if pid_file is not None:
            from hpclaunch.spawner import pidfile

            pidfile.check_pid_file(pid_file)
        # The watchdog first: a launcher killed while writing the PID file leaves a draft
        # or a whole file, and the watchdog, which knows the path, removes either.
        watchdog = _start_watchdog(guard.token, pid_file)
        guard.watchdog = watchdog
        if tree.parent_of(watchdog.pid) == os.getpid():  # we are PID 1 and adopted it
            guard.helpers = frozenset({watchdog.pid})
        if pid_file is not None:
            pidfile.write_pid_file(pid_file, os.getpid())
            pid_written = True
        # A program that goes on after the launch (the API) must not keep adopting, and
        # never reaping, its orphans: the bit is ours only for the launch's duration.
        adopted = not tree.is_subreaper() and tree.become_subreaper()
        child.libc()  # loaded before any fork: no dynamic loader between fork and exec
        yield guard
    finally:
        if adopted:
            tree.become_subreaper(False)
        if watchdog is not None:
            if guard.clean:
                watchdog.done()
            else:
                watchdog.close()  # EOF without "done": the watchdog kills what is left
        if pid_written and pid_file is not None:
            from hpclaunch.spawner import pidfile

            pidfile.remove_pid_file(pid_file, os.getpid())
        if own_inbox:
            inbox.uninstall()


def _start_watchdog(token: str, pid_file: Optional[str]) -> tree.Watchdog:
    """The watchdog, or a refusal (exit 2, nothing started) when it cannot be forked."""
    try:
        return tree.start_watchdog(token, pid_file)
    except OSError as exc:
        from hpclaunch.errors import SpawnError
        from hpclaunch.spawner.limits import fork_failure

        raise SpawnError(f"cannot start the launcher's watchdog, so no worker: "
                         f"{fork_failure(exc)}") from None
