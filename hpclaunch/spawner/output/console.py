"""The launcher's console: ordered, non-blocking writes to its own stdout and stderr.

:class:`Console` writes through its own non-blocking descriptors (a pipe or terminal is
reopened via ``/proc/self/fd``, so the ``O_NONBLOCK`` never leaks into the shared file
description workers and the shell use), queues what the console cannot take now, in order,
and flushes it when the event loop says the console is writable. A console that stops
reading therefore never blocks signal handling, fail-fast or teardown; once
:data:`CONSOLE_BUFFER` bytes are queued the relay stops reading workers' pipes
(back-pressure), so memory stays bounded and workers block on their own writes, as they
would on a slow terminal.

Nothing is dropped while the console's reader lives: after the workers are gone,
:meth:`Console.flush` waits for as long as the reader takes (``| less``, a paused
terminal, a slow file system), and only a SIGINT/TERM/HUP from outside ends that wait
(:meth:`Console.abandon`). Output is lost only then, or when the reader is gone (``2>&-``,
``| head -1``, a dead ``tee``: that costs the output, never the launch); either way
:meth:`Console.close` says how many bytes, on stderr when that is another file, and
:meth:`Console.take_drops` hands the counts to the launch's event record. How each worker's
output reaches the console is :mod:`hpclaunch.spawner.output.wiring`.
"""

from __future__ import annotations

import errno
import os
import selectors
import stat
from collections import deque
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional, Sequence, Union

if TYPE_CHECKING:
    from hpclaunch.spawner.inbox import SignalInbox

#: Console bytes queued before the relay stops reading workers' pipes (back-pressure).
CONSOLE_BUFFER = 4 << 20
#: Why bytes were dropped when the console's reader left (a SIGINT/TERM/HUP is the other).
READER_GONE = "the console's reader is gone"

Buffer = Union[bytes, memoryview]
#: Who wrote the last, still unfinished line on a console (a relay stream, or the launcher).
Owner = object
LAUNCHER: Owner = object()


def same_file(fd_a: int, fd_b: int) -> bool:
    """Whether two descriptors are one file (``>log 2>&1``, one terminal, one pipe)."""
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _Sink:
    """One physical console file: its non-blocking fd, the queue, and the open line."""

    __slots__ = ("fd", "owned", "queue", "queued", "broken", "open_owner", "watched")

    def __init__(self, fd: int, owned: bool) -> None:
        self.fd = fd
        self.owned = owned
        self.queue: Deque[Buffer] = deque()
        self.queued = 0
        self.broken = fd < 0
        self.open_owner: Optional[Owner] = None
        self.watched = False


def _open_sink(fd: int) -> _Sink:
    """A non-blocking descriptor of our own for a pipe or terminal; the fd itself otherwise.

    A regular file never blocks (``O_NONBLOCK`` means nothing there) and reopening one
    would lose its offset; a socket cannot be reopened, so it is written as it is.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return _Sink(-1, False)
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        return _Sink(fd, False)
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        return _Sink(os.open(f"/proc/self/fd/{fd}", flags), True)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a pipe whose reader is gone
            return _Sink(-1, False)
        return _Sink(fd, False)


class Console:
    """Ordered, non-blocking writes to the launcher's stdout (1) and stderr (2)."""

    def __init__(self, out_fd: int = 1, err_fd: int = 2) -> None:
        out = _open_sink(out_fd)
        err = out if same_file(out_fd, err_fd) else _open_sink(err_fd)
        self.sinks: Dict[int, _Sink] = {1: out, 2: err}
        self.selector: Optional[selectors.BaseSelector] = None
        #: Why the console was given up on (a stop signal): from then on every write is
        #: what the console takes at once, the rest dropped (see :meth:`abandon`).
        self.abandoned: Optional[str] = None
        #: Bytes dropped, by why, since :meth:`take_drops` last took them; and in all.
        self.drops: Dict[str, int] = {}
        self.dropped: Dict[str, int] = {}
        #: Called once the queue has drained below half of :data:`CONSOLE_BUFFER`.
        self.on_room: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ writing

    @property
    def full(self) -> bool:
        return any(sink.queued >= CONSOLE_BUFFER for sink in self._unique())

    def write(self, target: int, owner: Owner, prefix: bytes, body: Buffer, open_end: bool) -> None:
        """Write ``body`` (segments, every one but the first already prefixed) for ``owner``.

        The first segment gets ``prefix`` unless it continues ``owner``'s unfinished line;
        a line another owner left unfinished is ended first, so two writers' bytes never
        share a segment. ``open_end``: ``body`` ends mid-line.
        """
        sink = self.sinks[target]
        if sink.open_owner is owner:
            parts: List[Buffer] = [body]
        elif sink.open_owner is None:
            parts = [prefix, body]
        else:
            parts = [b"\n", prefix, body]
        sink.open_owner = owner if open_end else None
        self._send(sink, parts)

    def message(self, data: bytes) -> None:
        """A launcher message (whole lines) on stderr, in order with workers' output."""
        self.write(2, LAUNCHER, b"", data, False)

    def _send(self, sink: _Sink, parts: Sequence[Buffer]) -> None:
        total = sum(len(part) for part in parts)
        if sink.broken:
            self._drop(READER_GONE, total)
            return
        if sink.queue:
            self._flush(sink)
        if not sink.queue:
            try:
                written = os.writev(sink.fd, parts)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError:  # EPIPE, EBADF, EIO (terminal hung up): the console is gone
                self._break(sink)
                self._drop(READER_GONE, total)
                return
            if written == total:
                return
            rest: Buffer = memoryview(b"".join(parts))[written:]
        else:
            rest = b"".join(parts)
        if self.abandoned is not None:
            self._drop(self.abandoned, len(rest))
            return
        sink.queue.append(rest)
        sink.queued += len(rest)
        self._watch(sink)

    def _drop(self, why: str, count: int) -> None:
        if count:
            self.drops[why] = self.drops.get(why, 0) + count
            self.dropped[why] = self.dropped.get(why, 0) + count

    def _flush(self, sink: _Sink) -> bool:
        """Write what the console takes now; True if anything was written."""
        progress = False
        while sink.queue and not sink.broken:
            head = sink.queue[0]
            try:
                written = os.write(sink.fd, head)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._break(sink)
                break
            progress = True
            sink.queued -= written
            if written == len(head):
                sink.queue.popleft()
            else:
                sink.queue[0] = memoryview(head)[written:]
        return progress

    def _break(self, sink: _Sink) -> None:
        sink.broken = True
        self._clear(sink, READER_GONE)
        self._unwatch(sink)
        self.on_room()

    def _clear(self, sink: _Sink, why: str) -> None:
        self._drop(why, sink.queued)
        sink.queue.clear()
        sink.queued = 0

    # ------------------------------------------------------------------ event loop

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Let ``selector``'s loop flush the queue when the console can take more."""
        self.selector = selector
        for sink in self._unique():
            if sink.queue:
                self._watch(sink)

    def detach(self) -> None:
        for sink in self._unique():
            self._unwatch(sink)
        self.selector = None

    def on_writable(self, fd: int) -> bool:
        for sink in self._unique():
            if sink.fd == fd:
                self._flush(sink)
                if not sink.queue:
                    self._unwatch(sink)
        if all(sink.queued < CONSOLE_BUFFER // 2 for sink in self._unique()):
            self.on_room()
        return True

    def _watch(self, sink: _Sink) -> None:
        if self.selector is not None and not sink.watched and not sink.broken:
            self.selector.register(sink.fd, selectors.EVENT_WRITE, self.on_writable)
            sink.watched = True

    def _unwatch(self, sink: _Sink) -> None:
        if self.selector is not None and sink.watched:
            self.selector.unregister(sink.fd)
        sink.watched = False

    # ------------------------------------------------------------------ the end

    def flush(
        self, interrupt_fd: int = -1, interrupted: Callable[[], Optional[int]] = lambda: None
    ) -> Optional[int]:
        """Wait until everything queued is written or its reader is gone: as long as that
        takes, unless ``interrupt_fd`` turns readable and ``interrupted()`` names what
        arrived there as a reason to stop (a SIGINT/TERM/HUP), which is returned.

        Without ``interrupt_fd`` nothing can end the wait but the reader: callers that can
        be asked to stop pass their signal inbox.
        """
        sinks = [sink for sink in self._unique() if sink.queue and not sink.broken]
        if not sinks:
            return None
        with selectors.DefaultSelector() as waiter:
            for sink in sinks:
                waiter.register(sink.fd, selectors.EVENT_WRITE, sink)
            if interrupt_fd >= 0:
                waiter.register(interrupt_fd, selectors.EVENT_READ, None)
            while any(sink.queue for sink in sinks):
                for key, _ in waiter.select():
                    if key.data is None:
                        stop = interrupted()
                        if stop is not None:
                            return stop
                        continue
                    sink = key.data
                    self._flush(sink)
                    if not sink.queue:
                        waiter.unregister(sink.fd)
        return None

    def abandon(self, why: str) -> None:
        """Stop waiting on the console for good (``why``: the stop signal that asked): what
        it holds is dropped, and from now on what it cannot take at once is dropped too."""
        self.abandoned = why
        for sink in self._unique():
            self._clear(sink, why)
            self._unwatch(sink)
        self.on_room()

    def take_drops(self) -> Dict[str, int]:
        """Bytes dropped since the last call, by why (for the launch's event record)."""
        drops, self.drops = self.drops, {}
        return drops

    def close(self, inbox: Optional[SignalInbox] = None) -> None:
        """Deliver what is queued (a SIGINT/TERM/HUP in ``inbox`` ends the wait), say what
        was dropped, if anything, and close."""
        self.detach()
        stop = self.flush(inbox.read_fd, inbox.fatal) if inbox is not None else None
        if stop is not None:
            import signal

            self.abandon(f"stopped by {signal.Signals(stop).name}")
        self._say_dropped()
        for sink in self._unique():
            if sink.owned:
                os.close(sink.fd)
            sink.owned = False
            sink.broken = True

    def _say_dropped(self) -> None:
        """One line on stderr with what was dropped, written only if stderr takes it now:
        when stderr is the file that stopped taking output, nobody would read it."""
        if not self.dropped:
            return
        err = self.sinks[2]
        if err.broken or err.queue:
            return
        counts = "; ".join(f"{count} bytes ({why})" for why, count in self.dropped.items())
        line = f"hpclaunch: warning: output not delivered to the console: {counts}\n"
        try:
            os.write(err.fd, line.encode())
        except OSError:
            pass

    def _unique(self) -> List[_Sink]:
        out, err = self.sinks[1], self.sinks[2]
        return [out] if out is err else [out, err]
