"""Workers' console output: whole lines prefixed by rank, raw on request, filtered by rank.

("\r" and "\n" end a segment; the other 254 byte values pass through as they are.)
"""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from tests.conftest import WORKER, launcher_cmd, run_launcher

WRITER = """
import os, sys
rank = os.environ["RANK"]
out = sys.stdout.buffer
out.write(b"one " + rank.encode() + b"\\n")
out.write(b"part-")   # a partial line, finished by a later write
out.flush()
out.write(b"ial " + rank.encode() + b"\\n" + bytes(range(0, 10)) + bytes(range(14, 256)) + b"\\n")
out.write(b"no newline at the end " + rank.encode())
out.flush()
"""


def test_lines_are_prefixed_whole_and_binary_safe(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    result = subprocess.run(
        launcher_cmd("--nproc_per_node", "3", "--no_local_rank", str(script)),
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    binary = bytes(range(0, 10)) + bytes(range(14, 256))
    for rank in range(3):
        prefix = f"[rank{rank}]: ".encode()
        assert prefix + f"one {rank}\n".encode() in result.stdout
        assert prefix + f"part-ial {rank}\n".encode() in result.stdout
        assert prefix + binary + b"\n" in result.stdout
        assert prefix + f"no newline at the end {rank}".encode() in result.stdout
    # An unfinished line is ended only where another rank's output follows it: the last
    # one on the console stays as its rank wrote it.
    lines = result.stdout.split(b"\n")
    assert len(lines) == 12 and all(line.startswith(b"[rank") for line in lines)
    assert lines[-1].startswith(b"[rank") and b"no newline at the end" in lines[-1]


def test_no_prefix_passes_output_through_raw() -> None:
    result = run_launcher("--nproc_per_node", "2", "--no_prefix", WORKER, "--print", "raw")
    assert result.returncode == 0
    # Raw means both workers write to one stdout at once: under ``python -u`` print's text
    # and its newline are two writes, so the two lines may interleave at the newline.
    assert sorted(result.stdout.replace("\n", "").split("raw")[1:]) == [
        " from rank 0",
        " from rank 1",
    ]
    assert result.stdout.count("\n") == 2 and "[rank" not in result.stdout


def test_ranks_filter_shows_only_those_ranks() -> None:
    result = run_launcher("--nproc_per_node", "3", "--ranks_filter", "0,2", WORKER, "--print", "hi")
    assert result.returncode == 0
    assert sorted(result.stdout.splitlines()) == [
        "[rank0]: hi from rank 0",
        "[rank2]: hi from rank 2",
    ]


def test_a_flood_is_relayed_completely(tmp_path: Path) -> None:
    script = tmp_path / "flood.py"
    script.write_text(
        "import os, sys\n"
        "line = (os.environ['RANK'] * 99 + '\\n').encode()\n"
        "sys.stdout.buffer.write(line * 200_000)\n"  # ~20 MB per rank
    )
    result = subprocess.run(
        launcher_cmd("--nproc_per_node", "2", "--no_local_rank", str(script)),
        capture_output=True,
    )
    assert result.returncode == 0
    for rank in "01":
        assert result.stdout.count(f"[rank{rank}]: {rank * 99}\n".encode()) == 200_000


def test_banner_names_the_world_and_quiet_hides_it() -> None:
    result = run_launcher("--nproc_per_node", "2", WORKER)
    first = result.stderr.splitlines()[0]
    assert first.startswith("hpclaunch: local world: node 0/1")
    assert "2 worker(s), ranks 0-1 of 2" in first and "master 127.0.0.1:" in first
    quiet = run_launcher("--quiet", "--nproc_per_node", "2", WORKER)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_failure_summary_is_coloured_on_a_tty_unless_no_color() -> None:
    def stderr_via_tty(extra_env: dict[str, str]) -> bytes:
        leader, follower = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        env.update(TERM="xterm", **extra_env)
        proc = subprocess.Popen(
            launcher_cmd("--quiet", "--no_python", "/bin/false"), stderr=follower, env=env
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            chunks.append(data)
        proc.wait()
        os.close(leader)
        assert proc.returncode == 1
        return b"".join(chunks)

    assert b"\x1b[1;31mhpclaunch: worker failed" in stderr_via_tty({})
    plain = stderr_via_tty({"NO_COLOR": "1"})
    assert b"hpclaunch: worker failed" in plain and b"\x1b[" not in plain


def test_version() -> None:
    result = run_launcher("--version")
    assert result.returncode == 0
    from hpclaunch import __version__

    assert result.stdout.strip() == f"hpclaunch {__version__}"


def test_a_closed_console_does_not_kill_the_workers(tmp_path: Path) -> None:
    """``hpclaunch ... | head -1``: the relay drops output it cannot write, workers go on."""
    done = tmp_path / "done"
    script = f"for i in $(seq 1 20000); do echo line $i; done; touch {done}$RANK"
    proc = subprocess.Popen(
        launcher_cmd(
            "-q", "--nproc_per_node", "2", "--no_local_rank", "--no_python", "sh", "-c", script
        ),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"[rank")
    proc.stdout.close()  # like `head -1` exiting
    assert proc.wait(timeout=60) == 0
    assert (tmp_path / "done0").exists() and (tmp_path / "done1").exists()
