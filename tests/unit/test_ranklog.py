"""RankLog, the relay's writer of a per-rank log: what it took, and why it stopped, on real
files (a regular file, and /dev/full: every write refused with ENOSPC)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpclaunch.spawner.output.ranklog import CAN_SPLICE, RankLog
from tests.conftest import require


def test_write_takes_everything_a_file_takes(tmp_path: Path) -> None:
    path = tmp_path / "rank0.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        log = RankLog(fd, str(path))
        assert log.write(b"one\n") == 4 and log.write(b"two") == 3
        assert log.written == 7 and log.error is None and log.why() == ""
    finally:
        os.close(fd)
    assert path.read_bytes() == b"one\ntwo"


def test_write_to_a_full_device_stops_and_says_why() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        log = RankLog(fd, "/dev/full")
        assert log.write(b"lost\n") == 0
        assert log.why() == "No space left on device (ENOSPC)"
        assert log.write(b"more") == 0  # nothing is tried again
        assert log.written == 0
    finally:
        os.close(fd)


def test_splice_moves_a_pipes_bytes_and_leaves_them_when_refused(tmp_path: Path) -> None:
    # Python 3.9 has no os.splice (the relay then reads and writes): a local skip, a CI failure.
    require(CAN_SPLICE, "os.splice (Python 3.10+ on Linux)")
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    path = tmp_path / "rank0.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.write(write_end, b"spliced\n")
        log = RankLog(fd, str(path))
        assert log.splice_from(read_end, 1 << 20) == 8
        with pytest.raises(BlockingIOError):
            log.splice_from(read_end, 1 << 20)
        os.write(write_end, b"kept\n")
        refused = RankLog(full, "/dev/full")
        with pytest.raises(OSError):
            refused.splice_from(read_end, 1 << 20)
        assert refused.error is not None and refused.written == 0
        assert os.read(read_end, 100) == b"kept\n"  # still there, for the console
        os.close(write_end)
        write_end = -1
        assert log.splice_from(read_end, 1 << 20) == 0  # EOF
    finally:
        for each in (read_end, write_end, fd, full):
            if each >= 0:
                os.close(each)
    assert path.read_bytes() == b"spliced\n"
