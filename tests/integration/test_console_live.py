"""What a user watching the console sees: live partial lines, a terminal for workers on a
terminal, each rank's stdout/stderr order, the --no_local_rank hint, log levels.

Real pipes and real pseudo-terminals (``pty.openpty``) throughout; waits are bounded by a
generous hang guard, never a timing assertion.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional

from tests.conftest import launcher_cmd

HANG_GUARD = 60.0


def read_until(fd: int, done: Callable[[bytes], bool], guard: float = HANG_GUARD) -> bytes:
    """Read ``fd`` (a pipe or a pty leader) until ``done(seen)`` or EOF; fail on the guard."""
    seen = b""
    deadline = time.monotonic() + guard
    while not done(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"hang guard: still waiting, got {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: a pty whose other side is closed
            data = b""
        if not data:
            break
        seen += data
    return seen


def progress_script(tmp_path: Path) -> tuple[Path, Path]:
    """Rank 0 prints a progress bar update with no newline, then blocks on a FIFO we hold."""
    gate = tmp_path / "gate.fifo"
    os.mkfifo(gate)
    script = tmp_path / "bar.py"
    script.write_text(
        "import os, sys\n"
        "if os.environ['RANK'] == '0':\n"
        "    sys.stdout.write('\\rstep 1/3 ' + str(sys.stdout.isatty()))\n"
        "    sys.stdout.flush()\n"
        f"    open({str(gate)!r}).read()\n"  # blocks until the test opens the gate
        "    sys.stdout.write('\\rstep 3/3\\n')\n"
    )
    return script, gate


def open_gate(gate: Path) -> None:
    fd = os.open(gate, os.O_WRONLY)
    os.close(fd)


def test_a_partial_line_shows_while_the_worker_is_still_running_on_a_pipe(
    tmp_path: Path,
) -> None:
    script, gate = progress_script(tmp_path)
    proc = subprocess.Popen(
        launcher_cmd("-q", "--nproc_per_node", "2", "--no_local_rank", str(script)),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        seen = read_until(proc.stdout.fileno(), lambda s: b"step 1/3" in s)
        # The worker cannot have gone on: it is blocked until we open the gate.
        assert b"[rank0]: step 1/3 False" in seen
    finally:
        open_gate(gate)
    rest = proc.stdout.read()
    assert proc.wait(timeout=HANG_GUARD) == 0
    assert b"[rank0]: \rstep 3/3\n" in seen + rest or b"step 3/3\n" in rest


def launch_on_pty(args: List[str], env: Optional[dict[str, str]] = None) -> tuple[
    subprocess.Popen[bytes], int
]:
    """The launcher with stdout and stderr on one terminal; returns it and the leader fd."""
    leader, follower = pty.openpty()
    full_env = dict(os.environ if env is None else env, TERM="xterm-256color")
    proc = subprocess.Popen(
        launcher_cmd(*args), stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
        env=full_env,
    )
    os.close(follower)
    return proc, leader


def test_a_partial_line_shows_live_on_a_terminal_and_workers_see_a_terminal(
    tmp_path: Path,
) -> None:
    script, gate = progress_script(tmp_path)
    proc, leader = launch_on_pty(["-q", "--nproc_per_node", "2", "--no_local_rank", str(script)])
    try:
        seen = read_until(leader, lambda s: b"step 1/3" in s)
        assert b"step 1/3 True" in seen  # isatty() is true for the worker
    finally:
        open_gate(gate)
    read_until(leader, lambda s: False)
    os.close(leader)
    assert proc.wait(timeout=HANG_GUARD) == 0


ISATTY = (
    "import os, sys\n"
    "print('out', sys.stdout.isatty(), 'err', sys.stderr.isatty(), "
    "'term', os.environ.get('TERM'), 'unbuffered', os.environ.get('PYTHONUNBUFFERED'))\n"
)


def test_workers_see_a_terminal_only_when_the_console_is_one(
    tmp_path: Path,
) -> None:
    script = tmp_path / "isatty.py"
    script.write_text(ISATTY)
    args = ["-q", "--nproc_per_node", "2", "--no_local_rank", str(script)]
    proc, leader = launch_on_pty(args)
    on_tty = read_until(leader, lambda s: False)
    os.close(leader)
    assert proc.wait(timeout=HANG_GUARD) == 0
    for rank in (0, 1):
        assert f"[rank{rank}]: out True err True term xterm-256color".encode() in on_tty
    on_pipe = subprocess.run(launcher_cmd(*args), capture_output=True, timeout=HANG_GUARD)
    assert on_pipe.returncode == 0
    for rank in (0, 1):
        line = f"[rank{rank}]: out False err False term".encode()
        assert line in on_pipe.stdout
    assert on_pipe.stdout.count(b"unbuffered 1") == 2


def test_window_size_is_passed_on(tmp_path: Path) -> None:
    script = tmp_path / "size.py"
    script.write_text("import os\nprint('size', os.get_terminal_size(1))\n")
    leader, follower = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 123, 0, 0))
    proc = subprocess.Popen(
        launcher_cmd("-q", "--nproc_per_node", "2", "--no_local_rank", str(script)),
        stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    seen = read_until(leader, lambda s: False)
    os.close(leader)
    assert proc.wait(timeout=HANG_GUARD) == 0
    assert seen.count(b"columns=123, lines=41") == 2, seen


ALTERNATE = (
    "import os\n"
    "for i in range(2000):\n"
    "    os.write(1 + i % 2, b'line %d\\n' % i)\n"
)


def rank_lines(output: bytes, rank: int) -> List[int]:
    return [int(n) for n in re.findall(rb"\[rank%d\]: line (\d+)\r?\n" % rank, output)]


def test_stdout_and_stderr_keep_their_order_in_one_file(tmp_path: Path) -> None:
    """``>log 2>&1``: each rank's lines come out in the order the rank wrote them."""
    script = tmp_path / "alternate.py"
    script.write_text(ALTERNATE)
    log = tmp_path / "console.log"
    with open(log, "wb") as handle:
        result = subprocess.run(
            launcher_cmd("-q", "--nproc_per_node", "2", "--no_local_rank", str(script)),
            stdout=handle, stderr=subprocess.STDOUT, timeout=HANG_GUARD,
        )
    assert result.returncode == 0
    output = log.read_bytes()
    for rank in (0, 1):
        assert rank_lines(output, rank) == list(range(2000))


def test_stdout_and_stderr_keep_their_order_on_a_terminal(tmp_path: Path) -> None:
    script = tmp_path / "alternate.py"
    script.write_text(ALTERNATE)
    proc, leader = launch_on_pty(["-q", "--nproc_per_node", "2", "--no_local_rank", str(script)])
    output = read_until(leader, lambda s: False)
    os.close(leader)
    assert proc.wait(timeout=HANG_GUARD) == 0
    for rank in (0, 1):
        assert rank_lines(output, rank) == list(range(2000))


def test_separate_stdout_and_stderr_still_get_each_stream(tmp_path: Path) -> None:
    script = tmp_path / "alternate.py"
    script.write_text(ALTERNATE)
    result = subprocess.run(
        launcher_cmd("-q", "--nproc_per_node", "2", "--no_local_rank", str(script)),
        capture_output=True, timeout=HANG_GUARD,
    )
    assert result.returncode == 0
    for rank in (0, 1):
        assert rank_lines(result.stdout, rank) == list(range(0, 2000, 2))
        assert rank_lines(result.stderr, rank) == list(range(1, 2000, 2))


TORCHRUN_STYLE = (
    "import argparse, os\n"
    "parser = argparse.ArgumentParser(description='a DDP script written for torchrun')\n"
    "parser.add_argument('--epochs', type=int, default=1)\n"
    "args = parser.parse_args()\n"
    "print('training on local rank', os.environ['LOCAL_RANK'])\n"
)


def test_a_script_refusing_local_rank_gets_the_no_local_rank_hint(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_STYLE)
    result = subprocess.run(
        launcher_cmd("--nproc_per_node", "2", str(script), "--epochs", "2"),
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --local_rank=" in result.stderr
    hint = [line for line in result.stderr.splitlines() if "hint:" in line]
    assert len(hint) == 1 and "--no_local_rank" in hint[0], result.stderr
    fixed = subprocess.run(
        launcher_cmd("--nproc_per_node", "2", "--no_local_rank", str(script), "--epochs", "2"),
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert fixed.returncode == 0 and "hint:" not in fixed.stderr
    assert "[rank1]: training on local rank 1" in fixed.stdout


def test_a_single_worker_s_failure_quotes_its_output_and_the_hint(tmp_path: Path) -> None:
    """One worker (the laptop case): no prefix, but still relayed, so the summary has its tail."""
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_STYLE)
    result = subprocess.run(
        launcher_cmd("--nproc_per_node", "1", str(script), "--epochs", "2"),
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert result.returncode == 2
    assert not any(line.startswith("[rank") for line in result.stderr.splitlines())
    quoted = [line for line in result.stderr.splitlines() if line.startswith("    ")]
    assert any("unrecognized arguments: --local_rank=0" in line for line in quoted), result.stderr
    hint = [line for line in result.stderr.splitlines() if "hint:" in line]
    assert len(hint) == 1 and "--no_local_rank" in hint[0], result.stderr


def test_no_prefix_output_is_not_relayed_so_no_tail(tmp_path: Path) -> None:
    """--no_prefix: the workers write to the console themselves; the summary says so."""
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_STYLE)
    result = subprocess.run(
        launcher_cmd("--no_prefix", "--nproc_per_node", "1", str(script)),
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert result.returncode == 2
    assert "its output went to this console (above)" in result.stderr
    assert "unrecognized arguments: --local_rank=0" in result.stderr  # the worker's own line


def test_an_ordinary_failure_gets_no_hint(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text("import sys\nsys.exit('error: unrecognized arguments: --epochs')\n")
    result = subprocess.run(
        launcher_cmd("--nproc_per_node", "2", str(script)),
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert result.returncode == 1
    assert "    error: unrecognized arguments: --epochs" in result.stderr
    assert "hint:" not in result.stderr


def test_the_failure_summary_quotes_a_rank_the_filter_hides(tmp_path: Path) -> None:
    script = tmp_path / "fail1.py"
    script.write_text(
        "import os\n"
        "print('rank', os.environ['RANK'], 'says hello')\n"
        "if os.environ['RANK'] == '1':\n"
        "    raise RuntimeError('rank one lost its data')\n"
    )
    result = subprocess.run(
        launcher_cmd("--nproc_per_node", "2", "--no_local_rank", "--ranks_filter", "0",
                     str(script)),
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert result.returncode == 1
    assert "rank 1 says hello" not in result.stdout and "[rank1]" not in result.stderr
    summary = result.stderr[result.stderr.index("worker failed: rank 1"):]
    assert "    RuntimeError: rank one lost its data" in summary
    assert "    rank 1 says hello" in summary
    assert "went to this console" not in summary


def test_ranks_filter_beyond_the_world_is_bad_input() -> None:
    result = subprocess.run(
        launcher_cmd("--nproc_per_node", "2", "--ranks_filter", "0,2", "--no_python",
                     "/bin/true"),
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpclaunch: error: --ranks_filter 0,2")
    assert "0..1" in lines[0]


def test_a_shown_partial_line_is_ended_before_another_rank_writes(tmp_path: Path) -> None:
    """Rank 0's unfinished line is shown; rank 1's line then starts on a line of its own,
    and rank 0's rest comes after it with its prefix. Without rank 1 in between, the rest
    continues the line without a second prefix."""
    gates = {name: tmp_path / f"{name}.fifo" for name in ("r1", "r0", "r0b")}
    for gate in gates.values():
        os.mkfifo(gate)
    script = tmp_path / "partial.py"
    script.write_text(
        "import os, sys\n"
        "def wait(gate):\n"
        "    open(gate).read()\n"
        "if os.environ['RANK'] == '0':\n"
        "    sys.stdout.write('abc'); sys.stdout.flush()\n"
        f"    wait({str(gates['r0'])!r})\n"
        "    sys.stdout.write('def\\nghi'); sys.stdout.flush()\n"
        f"    wait({str(gates['r0b'])!r})\n"
        "    sys.stdout.write('jkl\\n')\n"
        "else:\n"
        f"    wait({str(gates['r1'])!r})\n"
        "    sys.stdout.write('xyz\\n')\n"
    )
    proc = subprocess.Popen(
        launcher_cmd("-q", "--nproc_per_node", "2", "--no_local_rank", str(script)),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = read_until(fd, lambda s: b"abc" in s)
    open_gate(gates["r1"])
    seen += read_until(fd, lambda s: b"xyz\n" in s)
    open_gate(gates["r0"])
    seen += read_until(fd, lambda s: b"ghi" in s)
    open_gate(gates["r0b"])
    seen += proc.stdout.read()
    assert proc.wait(timeout=HANG_GUARD) == 0
    assert seen == b"[rank0]: abc\n[rank1]: xyz\n[rank0]: def\n[rank0]: ghijkl\n"
