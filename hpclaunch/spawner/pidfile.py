"""DeepSpeed's PID file (``--save_pid``): written whole or not at all, removed on every exit.

Created with ``O_CREAT|O_EXCL|O_NOFOLLOW``: a symlink planted at the path (say in a shared
/tmp) is refused, never written through, and the file is never world-writable. The
launcher removes it when it exits; the watchdog (:mod:`hpclaunch.spawner.tree`) removes it
when the launcher was killed, with :func:`remove_pid_file`, which never removes another
launcher's file.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Mapping, Optional

from hpclaunch.errors import SpawnError
from hpclaunch.spawner.logs import CREATE, write_all


def pid_file_path(save_pid: int, env: Mapping[str, str]) -> str:
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
    draft = pid_file_draft(path, pid)
    try:
        fd = os.open(draft, CREATE, 0o644)
    except OSError as exc:
        raise _pid_file_error(path, exc) from None
    try:
        try:
            write_all(fd, str(pid).encode())
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


def pid_file_draft(path: str, launcher: int) -> str:
    """Where the PID file is written before it is linked into place (never seen half-written)."""
    return f"{path}.{launcher}.tmp"


def remove_pid_file(path: str, launcher: int) -> None:
    """Remove the PID file only if it still names ``launcher`` (never someone else's).

    A draft left by a launcher killed mid-write goes too: it is named by the launcher's PID.
    """
    _unlink_quietly(pid_file_draft(path, launcher))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        content = os.read(fd, 64).strip()
    finally:
        os.close(fd)
    if content == str(launcher).encode():
        _unlink_quietly(path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
