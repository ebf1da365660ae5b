"""A console nobody reads, a closed one, a broken one: the exit status and the teardown
never depend on it. And the launcher's own messages at each ``--log_level``.

Real pipes; workers report on a FIFO; waits are bounded by a hang guard, never timed.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Fifo, launcher_cmd, pids_of, wait_gone

HANG_GUARD = 60.0
F_SETPIPE_SZ = 1031


def test_a_stalled_console_does_not_delay_sigterm(fifo: Fifo, tmp_path: Path) -> None:
    """``hpclaunch ... | (sleep 60; cat)``: SIGTERM still stops everything at once."""
    script = tmp_path / "flood.sh"
    # 1 MiB is more than the console pipe holds: when a rank says "flooded" the launcher
    # holds output the console has not taken. (Flooding for ever after that would let one
    # rank fill the launcher's whole buffer before the other could say so.)
    script.write_text(
        "#!/bin/sh\n"
        "head -c 1048576 /dev/zero | tr '\\0' x | fold -w 99\n"
        f"echo \"worker $RANK $$\" > {fifo.path}\n"
        "exec sleep 600\n"
    )
    script.chmod(0o755)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen(
        launcher_cmd("-q", "--kill_timeout", "600", "--nproc_per_node", "2",
                     "--no_local_rank", "--no_python", str(script)),
        stdout=write_end, stderr=write_end,
    )
    os.close(write_end)
    try:
        pids = pids_of(fifo.expect(2))
        proc.send_signal(signal.SIGTERM)
        # The launcher handles it although nobody reads its output (a kill_timeout of
        # 600 s means SIGKILL escalation cannot be what ends it).
        assert proc.wait(timeout=HANG_GUARD) == 128 + signal.SIGTERM
        assert wait_gone(pids) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(read_end)


def test_a_stalled_console_holds_workers_back_without_losing_output(tmp_path: Path) -> None:
    """Back-pressure: while nobody reads, workers wait; once the reader reads, all of it
    arrives, whole lines, in order."""
    script = tmp_path / "lines.py"
    script.write_text(
        "import os, sys\n"
        "rank = os.environ['RANK']\n"
        "for i in range(300_000):\n"
        "    sys.stdout.write(f'{rank} {i:07d} ' + 'y' * 80 + '\\n')\n"
    )
    proc = subprocess.Popen(
        launcher_cmd("-q", "--nproc_per_node", "2", "--no_local_rank", str(script)),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    assert proc.wait(timeout=HANG_GUARD) == 0
    for rank in (0, 1):
        numbers = [
            int(line.split()[2]) for line in output.split(b"\n")
            if line.startswith(b"[rank%d]: " % rank)
        ]
        assert numbers == list(range(300_000))


def test_closed_stderr_keeps_the_workers_exit_code(tmp_path: Path) -> None:
    """``2>&-``: exit 3 stays 3, and stdout still gets the workers' lines.

    Rank 1 fails only after rank 0 has printed (a named pipe between them): otherwise its
    exit can stop rank 0 before rank 0's line exists, and the test would measure the race.
    """
    handoff = tmp_path / "handoff"
    os.mkfifo(handoff)
    script = (
        "echo on stdout; echo on stderr >&2; "
        f'if [ "$RANK" = 0 ]; then echo done > {handoff}; exit 0; fi; '
        f"read done < {handoff}; exit 3"
    )
    result = subprocess.run(
        ["sh", "-c", 'exec "$@" 2>&-', "sh",
         *launcher_cmd("--nproc_per_node", "2", "--no_local_rank", "--no_python", "sh", "-c",
                       script)],
        stdout=subprocess.PIPE, timeout=HANG_GUARD,
    )
    assert result.returncode == 3
    assert sorted(result.stdout.splitlines()) == [b"[rank0]: on stdout", b"[rank1]: on stdout"]


def test_closed_stdout_and_stderr_keep_the_exit_code() -> None:
    result = subprocess.run(
        ["sh", "-c", 'exec "$@" >&- 2>&-', "sh",
         *launcher_cmd("--nproc_per_node", "2", "--no_local_rank", "--no_python",
                       "sh", "-c", "echo hi; exit 5")],
        timeout=HANG_GUARD,
    )
    assert result.returncode == 5


def test_head_dash_1_keeps_the_workers_exit_code() -> None:
    """``2>&1 | head -1``: the reader leaves after one line; the exit status is still 3."""
    proc = subprocess.Popen(
        launcher_cmd("--nproc_per_node", "2", "--no_local_rank", "--no_python", "sh", "-c",
                     "for i in $(seq 1 20000); do echo line $i; done; exit 3"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=HANG_GUARD) == 3


def test_ctrl_c_after_the_reader_died_still_gives_workers_their_grace(fifo: Fifo) -> None:
    """``... 2>&1 | tee log``, tee killed, then Ctrl-C: workers get SIGTERM, exit 130."""
    script = (
        f"trap 'echo \"term $RANK $$\" > {fifo.path}; exit 0' TERM; "
        f"echo \"worker $RANK $$\" > {fifo.path}; "
        "while :; do echo tick; sleep 0.05; done"
    )
    proc = subprocess.Popen(
        launcher_cmd("--nproc_per_node", "2", "--no_local_rank", "--no_python", "sh", "-c",
                     script),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    workers = fifo.expect(2)
    proc.stdout.close()  # the reader dies
    proc.send_signal(signal.SIGINT)
    terms = fifo.expect(2)
    assert sorted(terms) == sorted(line.replace("worker", "term") for line in workers)
    assert proc.wait(timeout=HANG_GUARD) == 128 + signal.SIGINT


def leftover_warning_run(fifo: Fifo, tmp_path: Path, *flags: str) -> str:
    """Rank 0 ignores SIGTERM, rank 1 fails once rank 0 is ready: SIGTERM, then SIGKILL
    and the warning "killed N process(es) that outlived SIGTERM"."""
    script = tmp_path / "stubborn.sh"
    script.write_text(
        "#!/bin/sh\n"
        "if [ \"$RANK\" = 0 ]; then\n"
        "  trap '' TERM\n"
        f"  echo \"worker $RANK $$\" > {fifo.path}\n"
        "  exec sleep 600\n"
        "fi\n"
        f"echo \"worker $RANK $$\" > {fifo.path}\n"
        f"read go < {tmp_path}/go\n"
        "echo rank one fails; exit 4\n"
    )
    script.chmod(0o755)
    os.mkfifo(tmp_path / "go")
    proc = subprocess.Popen(
        launcher_cmd(*flags, "--kill_timeout", "0.5", "--nproc_per_node", "2",
                     "--no_local_rank", "--no_python", str(script)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    fifo.expect(2)
    with open(tmp_path / "go", "w") as go:
        go.write("go\n")
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 4
    return err


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_each_log_level_shows_what_it_says(fifo: Fifo, tmp_path: Path, level: str) -> None:
    err = leftover_warning_run(fifo, tmp_path, "--log_level", level)
    shown = {
        "plan": "hpclaunch: plan: {" in err,
        "signals": re.search(r"^hpclaunch: (sending|sent) SIGTERM to ", err, re.M) is not None
        and re.search(r"^hpclaunch: (sending|sent) SIGKILL to ", err, re.M) is not None,
        "banner": "hpclaunch: local world: node 0/1" in err,
        "warning": "hpclaunch: warning: killed 1 process(es) that outlived SIGTERM" in err,
        "failure": "hpclaunch: worker failed: rank 1" in err and "    rank one fails" in err,
    }
    expected = {
        "debug": {"plan", "signals", "banner", "warning", "failure"},
        "info": {"banner", "warning", "failure"},
        "warning": {"warning", "failure"},
        "error": {"failure"},
    }[level]
    assert {what for what, seen in shown.items() if seen} == expected, err


def test_quiet_is_error_level(fifo: Fifo, tmp_path: Path) -> None:
    err = leftover_warning_run(fifo, tmp_path, "--quiet")
    assert err.startswith("hpclaunch: worker failed: rank 1"), err
    assert "warning" not in err
