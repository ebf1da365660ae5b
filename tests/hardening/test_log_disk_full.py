"""Per-rank logs on a full file system: refused before anything starts when the log directory
cannot take a write (exit 2); when it fills up mid-run, the launcher says once per rank
which log stopped and why (ENOSPC), keeps the rest of that rank's output on the console,
and a failure summary says the log is incomplete (quoting whole last lines, not the cut end
of the log).

The file system is a real, small tmpfs, mounted with ``mount -n`` in a private mount
namespace (``unshare --mount``): it and everything on it vanish with the namespace, and
nothing is recorded in the machine's /run. The launcher runs inside; its stdout, stderr and
copies of the logs go to the test's directory, outside the tmpfs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import error_line, launcher_cmd, require

pytestmark = pytest.mark.root  # mounts / a pids cgroup and another user

#: Lines per rank: ~110 KB, more than the small tmpfs holds for both ranks' logs.
LINES = 20_000


def _in_a_full_tmpdir(tmp_path: Path, size: str, fill: bool, args: List[str]) -> Dict[str, str]:
    """Mount a tmpfs of ``size`` at tmp_path/disk (filled up when ``fill``), run the launcher
    with ``--enable_each_rank_log`` there; its status, stdout, stderr, and its logs' copies."""
    require(os.geteuid() == 0 and shutil.which("unshare") is not None, "root and unshare(1)")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    command = shlex.join(launcher_cmd("--enable_each_rank_log", str(disk), *args))
    script = "\n".join([
        f"mount -n -t tmpfs -o size={size} tmpfs {disk} || exit 99",
        f"dd if=/dev/zero of={disk}/fill bs=4k 2>/dev/null" if fill else ":",
        f"{command} >{out}/stdout 2>{out}/stderr",
        f"echo $? >{out}/status",
        f"for log in {disk}/*.log; do [ -e \"$log\" ] && cp \"$log\" {out}/; done",
        "exit 0",
    ])
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                           script], capture_output=True, text=True, timeout=180)
    require(done.returncode != 99, f"a mountable tmpfs ({done.stderr.strip()})")
    assert done.returncode == 0, done.stderr
    found = {path.name: path.read_text(errors="replace") for path in out.iterdir()}
    found["status"] = found["status"].strip()
    return found


def _worker(tmp_path: Path, fail: bool = False) -> List[str]:
    tail = '; echo "final line of rank $RANK"; exit 3' if fail else ""
    return ["--nproc_per_node", "2", "--no_local_rank", "--no_python", "/bin/sh", "-c",
            f'touch {tmp_path}/spawned$RANK; seq -f "$RANK-%g" 1 {LINES}{tail}']


def _expected(rank: int) -> str:
    return "".join(f"{rank}-{i}\n" for i in range(1, LINES + 1))


def _log_of(found: Dict[str, str], rank: int) -> str:
    return next(text for name, text in found.items() if name.endswith(f"_rank{rank}.log"))


def test_a_log_directory_that_cannot_take_a_write_is_refused(tmp_path: Path) -> None:
    found = _in_a_full_tmpdir(tmp_path, "16k", True, _worker(tmp_path))
    assert found["status"] == "2", found
    line = error_line(found["stderr"])
    assert "cannot take a write" in line and "No space left on device" in line
    assert str(tmp_path / "disk") in line
    assert not list(tmp_path.glob("spawned*"))
    assert not [name for name in found if name.endswith(".log")]  # nothing left behind


def test_a_log_that_fills_up_mid_run_is_said_once_and_its_output_kept(tmp_path: Path) -> None:
    found = _in_a_full_tmpdir(tmp_path, "64k", False, _worker(tmp_path))
    assert found["status"] == "0", found  # the workers ran to success: a full log is no failure
    stopped = re.findall(r"warning: rank (\d)'s log (\S+) stopped after (\d+) bytes: "
                         r"No space left on device \(ENOSPC\)", found["stderr"])
    assert sorted(rank for rank, _, _ in stopped) == ["0", "1"], found["stderr"]  # once each
    for rank, path, written in stopped:
        log = _log_of(found, int(rank))
        assert path.endswith(f"_rank{rank}.log") and int(written) == len(log)
        # The log holds the start of the rank's output; the console, the rest; nothing lost.
        prefix = f"[rank{rank}]: "
        rest = "".join(line[len(prefix):] + "\n" for line in found["stdout"].splitlines()
                       if line.startswith(prefix))
        assert log + rest == _expected(int(rank))
        assert len(log) < len(_expected(int(rank)))
    # The file system took what it could (one rank's burst may have filled it before the
    # other's first byte).
    assert sum(int(written) for _, _, written in stopped) > 0


def test_a_failing_ranks_summary_says_its_log_is_incomplete(tmp_path: Path) -> None:
    found = _in_a_full_tmpdir(tmp_path, "32k", False, _worker(tmp_path, fail=True))
    assert found["status"] == "3", found
    stderr = found["stderr"]
    summary = stderr[stderr.index("worker failed: rank"):]
    assert re.search(r"log: \S+_rank\d\.log is incomplete \(stopped after \d+ bytes: "
                     r"No space left on device \(ENOSPC\)\)", summary), summary
    rank = re.search(r"worker failed: rank (\d)", summary).group(1)  # type: ignore[union-attr]
    quoted = [line.strip() for line in summary.splitlines() if line.startswith("    ")]
    # Whole lines from the relay's copy, ending where the rank's output ended.
    assert quoted[-1] == f"final line of rank {rank}"
    assert all(re.fullmatch(rf"{rank}-\d+", line) for line in quoted[:-1]), quoted


def test_logs_that_fit_hold_every_byte(tmp_path: Path) -> None:
    found = _in_a_full_tmpdir(tmp_path, "1m", False, _worker(tmp_path))
    assert found["status"] == "0", found
    assert "warning" not in found["stderr"]
    for rank in (0, 1):
        assert _log_of(found, rank) == _expected(rank)
    assert found["stdout"] == ""
