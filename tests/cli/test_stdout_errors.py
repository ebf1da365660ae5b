"""What the launcher writes to its own stdout (``--dry-run``, ``--version``, ``--help``) either
arrives whole or the user reads one line saying why: a full file or a closed stdout is exit
status 1, never a traceback and never a success with nothing written."""

from __future__ import annotations

import subprocess
import sys
from typing import List

import pytest

from tests.conftest import error_line, launcher_cmd

COMMANDS = {
    "dry-run": ["--dry-run", "--nproc_per_node", "2", "--no_python", "/bin/true"],
    "version": ["--version"],
    "help": ["--help"],
}


def _run(args: List[str], stdout: str) -> subprocess.CompletedProcess[str]:
    if stdout == "closed":  # >&- as a shell gives it: fd 1 not open at all
        argv = ["/bin/sh", "-c", 'exec "$@" >&-', "sh", *launcher_cmd(*args)]
        return subprocess.run(argv, capture_output=False, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    with open("/dev/full", "w") as full:
        return subprocess.run(launcher_cmd(*args), stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)


@pytest.mark.parametrize("stdout", ["/dev/full", "closed"])
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_stdout_cannot_take_is_one_line_and_status_1(name: str, stdout: str) -> None:
    result = _run(COMMANDS[name], stdout)
    assert result.returncode == 1, result.stderr
    line = error_line(result.stderr)
    assert "stdout" in line
    assert ("closed" if stdout == "closed" else "No space left on device") in line


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_stdout_takes_is_written_whole(name: str) -> None:
    result = subprocess.run(launcher_cmd(*COMMANDS[name]), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    expected = {"dry-run": '"world_size": 2', "version": "hpclaunch ", "help": "usage:"}[name]
    assert expected in result.stdout and result.stdout.endswith("\n")
    assert "error" not in result.stderr


@pytest.mark.parametrize("stdout", ["/dev/full", "closed"])
def test_hpclaunch_torchruns_dry_run_is_held_to_the_same(stdout: str) -> None:
    argv = [sys.executable, "-m", "hpclaunch.torchrun", "--standalone", "--nproc-per-node",
            "2", "--no-python", "--dry-run", "/bin/true"]
    if stdout == "closed":
        result = subprocess.run(["/bin/sh", "-c", 'exec "$@" >&-', "sh", *argv],
                                stderr=subprocess.PIPE, text=True, timeout=60)
    else:
        with open("/dev/full", "w") as full:
            result = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True,
                                    timeout=60)
    assert result.returncode == 1, result.stderr
    line = error_line(result.stderr)
    assert "cannot write the plan" in line
