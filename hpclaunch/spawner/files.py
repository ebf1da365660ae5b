"""The PID file and per-rank log files, created so they can never be turned against us.

Both are opened with ``O_CREAT|O_EXCL|O_NOFOLLOW``: a symlink planted at the path (say in
a shared /tmp) is refused, never written through, and the files are never world-writable.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Dict, Iterable, List, Optional

from hpclaunch.errors import SpawnError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def pid_file_path(save_pid: int, env: Dict[str, str]) -> str:
    """DeepSpeed's ``/tmp/<PID>.deepspeed``, but honouring ``$TMPDIR`` as a user would expect."""
    return os.path.join(env.get("TMPDIR") or "/tmp", f"{save_pid}.deepspeed")


def write_pid_file(path: str, pid: int) -> None:
    """Create the PID file; a stale regular file of ours is replaced, anything else refused."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            raise SpawnError(
                f"PID file {path} exists and is not a regular file (a symlink?): remove it or "
                "pick another --save_pid"
            )
        if info.st_uid != os.getuid():
            raise SpawnError(
                f"PID file {path} belongs to uid {info.st_uid}: "
                "remove it or pick another --save_pid"
            )
        os.unlink(path)
    try:
        fd = os.open(path, _CREATE, 0o644)
    except OSError as exc:
        raise SpawnError(
            f"cannot create PID file {path} ({exc.strerror}): set TMPDIR to a writable directory"
        ) from None
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)


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


def open_log_files(paths: Iterable[str]) -> Dict[str, int]:
    """Create every rank's log before any worker starts, so a bad log dir spawns nothing."""
    fds: Dict[str, int] = {}
    try:
        for path in paths:
            make_log_dir(os.path.dirname(path) or ".")
            try:
                fds[path] = os.open(path, _CREATE, 0o644)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    why = "it already exists"
                elif exc.errno == errno.ELOOP:
                    why = "it is a symlink"
                else:
                    why = exc.strerror or str(exc)
                raise SpawnError(
                    f"cannot create log file {path} ({why}): pass a writable, clean "
                    "--enable_each_rank_log DIR"
                ) from None
    except BaseException:
        close_all(fds.values())
        raise
    return fds


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
