"""Copying workers' console output to the launcher's, segment by segment, by rank.

Each worker's stdout/stderr (a pipe or a pty) is read by the event loop when it is
readable, so workers never block on a full pipe while the launcher does something else.
A *segment* ends at a newline or at a carriage return (a progress bar's ``\\r``); each one
is written whole, with the rank's prefix, so two ranks' bytes never share a segment. The
unfinished end of a line is held back for at most :data:`IDLE_FLUSH` seconds and then shown
too (progress bars and prompts appear live); if the same rank goes on with that line
before anyone else writes, the rest follows without a second prefix. Bytes pass through
undecoded (binary output survives), byte for byte when unprefixed, with one exception: a
line one writer left unfinished gets a newline before another writer's output (another
rank's, or a launcher message) goes on the same console. A rank with a per-rank log has one
pipe whose bytes go to the log as they are, and to the console only once the log's file
system refuses them (:mod:`hpclaunch.spawner.output.ranklog`).

The last :data:`TAIL_BYTES` of every rank's output are kept in memory -- also for ranks
``--ranks_filter`` hides -- so the failure summary can quote a failing rank's last lines.
:attr:`OutputRelay.progress` holds, per rank, the monotonic time of its latest output: the
read that is made anyway stamps it, so watching for stalls costs no syscall per line.

Cost: one ``bytes.replace`` per read (the prefix after each inner newline) and one
``writev`` of prefix + body; a ``\\r`` in the chunk takes a regex pass instead.
"""

from __future__ import annotations

import fcntl
import os
import re
import selectors
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

if TYPE_CHECKING:
    from hpclaunch.spawner.output.console import Console
    from hpclaunch.spawner.output.ranklog import RankLog

#: An unfinished line longer than this is written out rather than held.
MAX_LINE = 1 << 20
#: One read takes at most this much (a pipe holds 64 KiB unless enlarged).
READ_SIZE = 1 << 20
#: A partial line waits this long for its end before it is shown anyway.
IDLE_FLUSH = 0.15
#: How much of each rank's most recent output is kept for the failure summary.
TAIL_BYTES = 16 << 10
#: Pipe capacity asked for (best effort): fewer, larger reads per MiB of output...
PIPE_SIZE = 1 << 18
#: ...for the first few pipes only: pipe buffers count against a per-user quota
#: (/proc/sys/fs/pipe-user-pages-soft, 64 MiB), past which every new pipe of the user's,
#: the workers' own included, is cut to one page.
PIPE_BUDGET = 16 << 20

_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, Python >= 3.10 only
_TERMINATOR = re.compile(rb"\r\n|\r|\n")


class Tail:
    """The last :data:`TAIL_BYTES` of one rank's output, both streams in arrival order."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def add(self, chunk: bytes) -> None:
        self.data = (self.data + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]

    def lines(self, count: int) -> List[str]:
        text = self.data.decode("utf-8", errors="replace")
        return [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()][-count:]


class Stream:
    """One worker pipe or pty: its rank's prefix, where it goes, and the unfinished line."""

    __slots__ = ("rank", "prefix", "template", "target", "pending", "deadline", "tail", "log")

    def __init__(self, rank: int, prefix: bytes, target: Optional[int], tail: Tail,
                 log: Optional[RankLog] = None) -> None:
        self.rank = rank
        self.prefix = prefix
        self.template = b"\\g<0>" + prefix.replace(b"\\", b"\\\\")
        self.target = target  # None: kept for the tail only (--ranks_filter, a per-rank log)
        self.pending = b""
        self.deadline = 0.0
        self.tail = tail
        self.log = log  # the rank's log, written byte for byte (see output/ranklog.py)


class OutputRelay:
    def __init__(self, selector: selectors.BaseSelector, console: Console) -> None:
        self.selector = selector
        self.console = console
        self.streams: Dict[int, Stream] = {}
        self.tails: Dict[int, Tail] = {}
        #: rank -> ``time.monotonic()`` of its latest output (absent: none yet)
        self.progress: Dict[int, float] = {}
        self.paused = False
        self.pipe_bytes = 0
        console.on_room = self.resume
        #: rank -> its per-rank log, once the file system refused a write to it.
        self.stopped_logs: Dict[int, RankLog] = {}
        #: Called once per rank whose log stopped: its output goes to the console from then.
        self.on_log_stopped: Callable[[int, RankLog], None] = lambda rank, log: None

    def add(self, fd: int, rank: int, prefix: bytes, target: Optional[int],
            log: Optional[RankLog] = None) -> None:
        os.set_blocking(fd, False)
        if self.pipe_bytes + PIPE_SIZE <= PIPE_BUDGET:
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
                self.pipe_bytes += PIPE_SIZE
            except OSError:
                pass  # a pty, or the user's pipe quota is spent: the default will do
        tail = self.tails.setdefault(rank, Tail())
        self.streams[fd] = Stream(rank, prefix, target, tail, log)
        if not self.paused:
            self.selector.register(fd, selectors.EVENT_READ, self.on_readable)

    def tail(self, rank: int, count: int = 20) -> List[str]:
        """The rank's last ``count`` non-blank lines (empty if it wrote nothing seen here)."""
        tail = self.tails.get(rank)
        return tail.lines(count) if tail is not None else []

    # ------------------------------------------------------------------ reading

    def on_readable(self, fd: int) -> bool:
        """Read what is there now and write its finished segments. False: nothing there."""
        stream = self.streams[fd]
        if stream.log is not None and stream.log.splices:
            try:
                moved = stream.log.splice_from(fd, READ_SIZE)
            except BlockingIOError:
                return False
            except OSError:
                self._log_stopped(stream, stream.log)  # the rest is read below, for the console
                moved = -1
            if moved > 0:
                self.progress[stream.rank] = time.monotonic()
                return True
            if moved == 0:
                self._close(fd, stream)
                return False
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:  # EIO: a pty whose worker side is closed; same as EOF
            data = b""
        if not data:
            self._close(fd, stream)
            return False
        self.progress[stream.rank] = time.monotonic()
        stream.tail.add(data)
        if stream.log is not None:  # without splice(2): the log gets what was read
            taken = stream.log.write(data)
            if stream.log.error is None:
                return True
            data = data[taken:]
            self._log_stopped(stream, stream.log)
        if stream.target is not None:
            self._relay(stream, data)
            if self.console.full:
                self.pause()
        return True

    def _log_stopped(self, stream: Stream, log: RankLog) -> None:
        """The file system refused the rank's log: its output goes to the console now."""
        stream.log = None
        stream.target = 1
        self.stopped_logs[stream.rank] = log
        self.on_log_stopped(stream.rank, log)

    def _relay(self, stream: Stream, data: bytes) -> None:
        if stream.pending:
            data = stream.pending + data
        if b"\r" in data:
            # A "\r" at the very end may be the first half of "\r\n": hold it.
            end = len(data) - 1 if data[-1:] == b"\r" else len(data)
            cut = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end)) + 1
            body = _TERMINATOR.sub(stream.template, data[:cut]) if cut else b""
        else:
            cut = data.rfind(b"\n") + 1
            body = data[:cut].replace(b"\n", b"\n" + stream.prefix) if cut else b""
        if cut:
            # The replacement also prefixed the final terminator: cut that prefix off.
            view = memoryview(body)[: len(body) - len(stream.prefix)]
            self.console.write(stream.target or 1, stream, stream.prefix, view, False)
        if cut < len(data):
            if cut or not stream.pending:  # a new partial line: its clock starts now
                stream.deadline = time.monotonic() + IDLE_FLUSH
            stream.pending = data[cut:]
            if len(stream.pending) >= MAX_LINE:
                self._show_pending(stream)
        else:
            stream.pending = b""

    def _show_pending(self, stream: Stream) -> None:
        """Write the unfinished line as it is; its owner may continue it later."""
        data, stream.pending = stream.pending, b""
        if stream.target is not None and data:
            self.console.write(
                stream.target, stream, stream.prefix, data, not data.endswith((b"\n", b"\r"))
            )

    # ------------------------------------------------------------------ idle partial lines

    def next_timeout(self) -> Optional[float]:
        """Seconds until the oldest held partial line is due, or None if none is held."""
        if self.paused:  # lines wait on the console, not on their writers: not idle
            return None
        due = [s.deadline for s in self.streams.values() if s.pending]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def show_idle(self) -> None:
        """Show partial lines whose writer has added nothing for :data:`IDLE_FLUSH`.

        A stream is read once more first: if the launcher, not the worker, was the slow
        one, the rest of the line may be waiting in the pipe.
        """
        if self.paused:
            return
        now = time.monotonic()
        for fd, stream in list(self.streams.items()):
            if stream.pending and stream.deadline <= now:
                self.on_readable(fd)
                if fd in self.streams and stream.pending and stream.deadline <= now:
                    self._show_pending(stream)

    # ------------------------------------------------------------------ back-pressure

    def pause(self) -> None:
        """The console is full: stop reading, so workers block on their own writes."""
        if not self.paused:
            self.paused = True
            for fd in self.streams:
                self.selector.unregister(fd)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            for fd in self.streams:
                self.selector.register(fd, selectors.EVENT_READ, self.on_readable)

    # ------------------------------------------------------------------ the end

    def drain_all(self) -> None:
        """At the end: take whatever is left in every pipe, without waiting for more.

        A descendant that survived (D state) may still hold a pipe open; we do not wait
        for its EOF. The console may be full by now; what it cannot take is queued.
        """
        self.resume()
        for fd in list(self.streams):
            while fd in self.streams and self.on_readable(fd):
                pass
            stream = self.streams.get(fd)
            if stream is not None:
                self._close(fd, stream)

    def _close(self, fd: int, stream: Stream) -> None:
        # The rank's last bytes as they are, also without a final newline: the console ends
        # that line only if another writer's output follows it.
        self._show_pending(stream)
        if not self.paused:
            self.selector.unregister(fd)
        os.close(fd)
        del self.streams[fd]
