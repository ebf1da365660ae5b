"""Copying workers' console output to the launcher's, one whole line at a time, by rank.

Each worker's stdout and stderr is a pipe the event loop reads when it is readable, so
workers never block on a full pipe while the launcher does something else, and ranks'
lines never interleave mid-line. Bytes pass through undecoded (binary output survives);
a line is cut only when it grows past :data:`MAX_LINE` without a newline.
"""

from __future__ import annotations

import os
import selectors
from typing import Dict, Set

#: A "line" longer than this is emitted in pieces (each prefixed) rather than held forever.
MAX_LINE = 1 << 20
READ_SIZE = 1 << 16


class Stream:
    """One worker pipe: the prefix for its lines, where they go, and the unfinished line."""

    __slots__ = ("prefix", "target", "pending")

    def __init__(self, prefix: bytes, target: int) -> None:
        self.prefix = prefix
        self.target = target
        self.pending = b""


class OutputRelay:
    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.streams: Dict[int, Stream] = {}
        self.broken: Set[int] = set()

    def add(self, fd: int, prefix: bytes, target: int) -> None:
        os.set_blocking(fd, False)
        self.streams[fd] = Stream(prefix, target)
        self.selector.register(fd, selectors.EVENT_READ, self.on_readable)

    def on_readable(self, fd: int) -> bool:
        """Read what is there now and emit complete lines. False when nothing was there."""
        stream = self.streams[fd]
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close(fd, stream)
            return False
        chunk = stream.pending + data
        cut = chunk.rfind(b"\n") + 1
        if cut:
            self._emit(stream, chunk[:cut])
        stream.pending = chunk[cut:]
        if len(stream.pending) >= MAX_LINE:
            self._emit(stream, stream.pending + b"\n")
            stream.pending = b""
        return True

    def drain_all(self) -> None:
        """At the end: take whatever is left in every pipe, without waiting for more.

        A descendant that survived (D state) may still hold a pipe open; we do not wait
        for its EOF.
        """
        for fd in list(self.streams):
            while fd in self.streams and self.on_readable(fd):
                pass
            stream = self.streams.get(fd)
            if stream is not None:
                self._close(fd, stream)

    def _close(self, fd: int, stream: Stream) -> None:
        if stream.pending:
            self._emit(stream, stream.pending + b"\n")
            stream.pending = b""
        self.selector.unregister(fd)
        os.close(fd)
        del self.streams[fd]

    def _emit(self, stream: Stream, lines: bytes) -> None:
        """``lines`` ends with a newline; every line in it gets the rank's prefix."""
        if stream.target in self.broken:
            return
        body = lines[:-1].replace(b"\n", b"\n" + stream.prefix)
        try:
            write_all(stream.target, stream.prefix + body + b"\n")
        except OSError:
            self.broken.add(stream.target)  # our console is gone; keep draining the workers


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            # A non-blocking console that is full: wait for it rather than drop lines.
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_WRITE)
                sel.select()
            continue
        view = view[written:]
