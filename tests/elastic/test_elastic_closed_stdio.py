"""Elastic mode with the launcher's stdout or stderr closed (``>&-``, ``2>&-``) costs output
only, as static mode does: no traceback, no silent exit, every worker runs, and a failing
worker's exit code is still the launcher's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, launcher_cmd

WORKER = 'echo out; echo err >&2; touch "$0/ran$RANK"; exit $(( RANK * $1 ))'


def _elastic(redirect: str, tmp_path: Path, code: int) -> subprocess.CompletedProcess[bytes]:
    argv = launcher_cmd("--enable_elastic_training", "--max_restarts", "0", "--kill_timeout",
                        "3", "--master_port", str(free_port()), "--nproc_per_node", "2",
                        "--no_local_rank", "--no_python", "/bin/sh", "-c", WORKER,
                        str(tmp_path), str(code))
    shell = ["/bin/sh", "-c", f'exec "$@" {redirect}', "sh", *argv]
    return subprocess.run(shell, capture_output=True, timeout=180)


@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">&- 2>&-"])
def test_closed_console_costs_output_only(torch_available: None, redirect: str,
                                          tmp_path: Path) -> None:
    result = _elastic(redirect, tmp_path, 0)
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(p.name for p in tmp_path.glob("ran*")) == ["ran0", "ran1"]
    assert b"Traceback" not in result.stdout + result.stderr
    if "2>&-" not in redirect:  # what could still be said was said
        assert b"hpclaunch: elastic: 2 worker(s) here" in result.stderr
        assert result.stderr.count(b"err\n") == 2


def test_closed_stderr_keeps_a_failing_workers_code(torch_available: None,
                                                    tmp_path: Path) -> None:
    result = _elastic("2>&-", tmp_path, 3)
    assert result.returncode == 3
    assert result.stdout.count(b"out\n") == 2
