"""The PID file and per-rank log files, created so they can never be turned against us.

Both are opened with ``O_CREAT|O_EXCL|O_NOFOLLOW``: a symlink planted at the path (say in
a shared /tmp) is refused, never written through, and the files are never world-writable.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Dict, Iterable, List, NamedTuple, Optional

from hpclaunch.errors import SpawnError
from hpclaunch.spawner import tree

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def pid_file_path(save_pid: int, env: Dict[str, str]) -> str:
    """DeepSpeed's ``/tmp/<PID>.deepspeed``, but honouring ``$TMPDIR`` as a user would expect."""
    return os.path.join(env.get("TMPDIR") or "/tmp", f"{save_pid}.deepspeed")


def check_pid_file(path: str) -> None:
    """Refuse a PID file we must not take over; remove a stale one of ours.

    Taken over would be: a symlink or non-regular file (planted in a shared /tmp), someone
    else's file, or one naming a process that is still running (another launcher started
    with the same ``--save_pid``: removing its file at our exit would lie about it).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise SpawnError(
            f"PID file {path} exists and is not a regular file (a symlink?): remove it or "
            "pick another --save_pid"
        )
    if info.st_uid != os.getuid():
        raise SpawnError(
            f"PID file {path} belongs to uid {info.st_uid}: remove it or pick another --save_pid"
        )
    owner = _pid_in(path)
    if owner is not None and owner != os.getpid() and _is_running(owner):
        raise SpawnError(
            f"PID file {path} names process {owner}, which is still running (another launch "
            "with the same --save_pid?): stop it or pick another --save_pid"
        )
    os.unlink(path)


def _pid_in(path: str) -> Optional[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 64).strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() and int(text) > 0 else None


def _is_running(pid: int) -> bool:
    """A live process (zombies count as gone: their owner has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def write_pid_file(path: str, pid: int) -> None:
    """Write a draft, then ``link`` it into place: the file is whole or absent, never empty.

    ``link`` never replaces an existing file, so a launcher that raced us to the name keeps
    it. On any failure (a full $TMPDIR, say) nothing of ours is left behind; a launcher
    killed mid-write leaves only the draft, which its watchdog removes.
    """
    draft = tree.pid_file_draft(path, pid)
    try:
        fd = os.open(draft, _CREATE, 0o644)
    except OSError as exc:
        raise _pid_file_error(path, exc) from None
    try:
        try:
            _write_all(fd, str(pid).encode())
        finally:
            os.close(fd)
        os.link(draft, path)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise SpawnError(
                f"PID file {path} was created by someone else while we started: "
                "pick another --save_pid"
            ) from None
        raise _pid_file_error(path, exc) from None
    finally:
        try:
            os.unlink(draft)
        except OSError:
            pass


def _pid_file_error(path: str, exc: OSError) -> SpawnError:
    return SpawnError(
        f"cannot write PID file {path} ({exc.strerror}): free space in or set TMPDIR to a "
        "writable directory"
    )


def _write_all(fd: int, data: bytes) -> None:
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
    try:
        for path in paths:
            make_log_dir(os.path.dirname(path) or ".")
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
            return LogFile(os.open(candidate, _CREATE, 0o644), candidate)
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
