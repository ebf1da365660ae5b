"""Relayed output passes through byte for byte: a worker whose output does not end in a
newline does not gain one. The one exception (docs/cli.md): a line one writer left
unfinished is ended before another writer's output goes on the same console."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tests.conftest import launcher_cmd

HANG_GUARD = 120


def _stdout(*args: str) -> bytes:
    result = subprocess.run(launcher_cmd("-q", "--no_local_rank", "--no_python", *args),
                            capture_output=True, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_last_line_without_newline_gains_no_byte() -> None:
    assert _stdout("/usr/bin/printf", "no newline") == b"no newline"


def test_binary_output_arrives_identical(tmp_path: Path) -> None:
    # 3 MB of random bytes: many reads, "\r"s and "\n"s anywhere, and no final newline.
    blob = tmp_path / "blob"
    data = hashlib.sha256(b"seed").digest() * 93750  # 3,000,000 bytes, deterministic
    blob.write_bytes(data.rstrip(b"\n") + b"x")
    got = _stdout("/bin/cat", str(blob))
    assert len(got) == blob.stat().st_size
    assert hashlib.sha256(got).digest() == hashlib.sha256(blob.read_bytes()).digest()


def test_unfinished_lines_of_two_ranks_are_ended_only_to_keep_them_apart() -> None:
    got = _stdout("--nproc_per_node", "2", "/bin/sh", "-c", 'printf "rank $RANK"')
    assert sorted(got.split(b"\n")) == sorted([b"[rank0]: rank 0", b"[rank1]: rank 1"])
    assert not got.endswith(b"\n")  # only the separating newline was added
