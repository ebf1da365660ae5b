"""A per-rank log (``--enable_each_rank_log``) as the relay writes it.

Workers do not write their log themselves: each writes to a pipe and the relay copies every
byte to the rank's file. So when the file system refuses a write (full: ENOSPC, a quota:
EDQUOT, an I/O error), the launcher knows which log stopped, after how many bytes and why;
it says so once, and the rest of that rank's output goes to the console instead of being
lost (the worker itself never sees the error, so a full log disk does not fail the job). The
failure summary then quotes the rank's last lines from the relay's tail, not the log's cut
end, and says the log is incomplete.
"""

from __future__ import annotations

import errno
import os
from typing import Optional

#: ``os.splice`` (Python 3.10+, Linux); without it the relay reads and writes.
CAN_SPLICE = hasattr(os, "splice")


class RankLog:
    """One rank's open log file: what was written to it, and why it stopped, if it did."""

    #: Whether the relay may move bytes into this log with :meth:`splice_from`.
    splices = CAN_SPLICE

    __slots__ = ("fd", "path", "written", "error")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.written = 0
        self.error: Optional[OSError] = None

    def splice_from(self, pipe: int, most: int) -> int:
        """Move up to ``most`` bytes from ``pipe`` into the log inside the kernel (no copy
        through the launcher: per-rank logs stay near the speed of a worker writing its
        file itself). Returns the count, 0 at EOF; raises BlockingIOError when the pipe is
        empty and OSError when the log refused (then :attr:`error` says why, and the bytes
        are still in the pipe for :meth:`write`'s caller to read)."""
        while True:
            try:
                moved = os.splice(pipe, self.fd, most)
            except InterruptedError:
                continue
            except BlockingIOError:
                raise
            except OSError as exc:
                self.error = exc
                raise
            self.written += moved
            return moved

    def write(self, data: bytes) -> int:
        """Append ``data``; returns how many bytes went in before the file refused more
        (then :attr:`error` says why, and nothing is written again)."""
        if self.error is not None:
            return 0
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except InterruptedError:
                continue
            except OSError as exc:
                self.error = exc
                break
        self.written += done
        return done

    def why(self) -> str:
        """Why it stopped, for a person: ``No space left on device (ENOSPC)``."""
        if self.error is None:
            return ""
        code = self.error.errno or 0
        name = errno.errorcode.get(code, str(code))
        return f"{self.error.strerror or self.error} ({name})"
