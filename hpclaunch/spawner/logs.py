"""Per-rank log files (``--enable_each_rank_log DIR``), created before any worker starts.

Each is opened with ``O_CREAT|O_EXCL|O_NOFOLLOW``: a symlink planted at the path is refused,
never written through, and no file is world-writable or overwritten.
"""

from __future__ import annotations

import errno
import os
from typing import Dict, Iterable, List, NamedTuple, Optional

from hpclaunch.errors import SpawnError

#: How a launch's own files are created: new, never through a symlink, not inherited.
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data`` to ``fd`` (a file system may take a write in parts); raises
    OSError on the first refusal (``os.write`` itself retries an interrupted call)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def make_log_dir(directory: str) -> None:
    """Create the log directory (DeepSpeed's runner expects that) or fail as bad input."""
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise SpawnError(
            f"cannot create log directory {directory} ({exc.strerror}): pass a writable "
            "--enable_each_rank_log DIR"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SpawnError(
            f"log directory {directory} is not writable: pass a writable --enable_each_rank_log DIR"
        )
    why = cannot_take_a_write(directory)
    if why:
        raise SpawnError(
            f"log directory {directory} cannot take a write ({why}): free space there or pass "
            "another --enable_each_rank_log DIR"
        )


def cannot_take_a_write(directory: str) -> str:
    """Why one byte cannot be written to a new file in ``directory`` ("" if it can).

    A full file system (or a spent quota) still lets a file be created, then refuses its
    first byte: only a write tells. The probe is an unnamed file (``O_TMPFILE``) where the
    file system has them, else a hidden one removed at once; either way nothing stays.
    """
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        name = None
    except (AttributeError, OSError):
        name = os.path.join(directory, f".hpclaunch-probe-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            fd = os.open(name, CREATE, 0o600)
        except OSError as exc:
            return exc.strerror or str(exc)
    try:
        os.write(fd, b"\n")
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
        if name is not None:
            try:
                os.unlink(name)
            except OSError:
                pass
    return ""


#: How many other names to try when a rank's log name is taken (``..._rank0.1.log`` on).
LOG_NAME_TRIES = 1000


class LogFile(NamedTuple):
    """A rank's open log: its descriptor and the name it really got."""

    fd: int
    path: str


def open_log_files(paths: Iterable[str]) -> Dict[str, LogFile]:
    """Create every rank's log before any worker starts, so a bad log dir spawns nothing.

    Keyed by the plan's name (DeepSpeed's ``<timestamp>_rank<R>.log``). If another launch
    already took that name (a Slurm job array sharing the directory, started in the same
    second), the log gets the first free ``<timestamp>_rank<R>.<n>.log``: never overwritten,
    never followed through a planted symlink (refused). On failure nothing is left behind.
    """
    logs: Dict[str, LogFile] = {}
    checked = set()
    try:
        for path in paths:
            directory = os.path.dirname(path) or "."
            if directory not in checked:
                make_log_dir(directory)
                checked.add(directory)
            logs[path] = _create_log(path)
    except BaseException:
        close_all(log.fd for log in logs.values())
        for log in logs.values():
            try:
                os.unlink(log.path)
            except OSError:
                pass
        raise
    return logs


def _create_log(path: str) -> LogFile:
    stem, ext = os.path.splitext(path)
    candidate = path
    for attempt in range(1, LOG_NAME_TRIES + 1):
        try:
            return LogFile(os.open(candidate, CREATE, 0o644), candidate)
        except OSError as exc:
            if exc.errno == errno.EEXIST and not os.path.islink(candidate):
                candidate = f"{stem}.{attempt}{ext}"
                continue
            raise SpawnError(f"cannot create log file {candidate} ({_why(exc)})") from None
    raise SpawnError(
        f"cannot create log file {path}: it and {LOG_NAME_TRIES} numbered variants already "
        "exist; pass a clean --enable_each_rank_log DIR"
    )


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EEXIST, errno.ELOOP):
        return "it is a symlink: pass a clean --enable_each_rank_log DIR"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return "too many open files: raise 'ulimit -n'"
    return f"{exc.strerror or exc}: pass a writable --enable_each_rank_log DIR"


def close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def tail_lines(path: Optional[str], count: int = 20, max_bytes: int = 64 * 1024) -> List[str]:
    """The last ``count`` lines of a log, reading at most ``max_bytes`` from its end."""
    if path is None:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]
