"""A launcher started with fd 0, 1 or 2 closed (``<&-``, ``>&-``, ``2>&-``) costs the output
that would have gone there, never a hole in a worker's descriptors: every worker starts with
0, 1 and 2 open, so the first file it opens cannot become its stdin, stdout or stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.conftest import ROOT, launcher_cmd

#: Each worker writes "<fd> open|closed" for 0, 1, 2 through fd 9 (so the check itself
#: opens nothing on 0-2), then opens a file the way a checkpoint would and says which fd it
#: got: 3 or more, or the hole it filled.
WORKER = (
    'exec 9>"$0/rank$RANK"; '
    'for fd in 0 1 2; do if [ -e /proc/self/fd/$fd ]; then echo "$fd open" >&9; '
    'else echo "$fd closed" >&9; fi; done; '
    'python3 -c "import os; print(\'checkpoint fd\', os.open(\'$0/ckpt$RANK\', '
    'os.O_CREAT | os.O_WRONLY))" >&9'
)

CLOSED = {"stdin": "<&-", "stdout": ">&-", "stderr": "2>&-", "all three": "<&- >&- 2>&-"}
OUTPUT = {"relayed": [], "raw": ["--no_prefix"], "per-rank logs": ["--enable_each_rank_log"]}


def _launch(redirect: str, flags: List[str], out: Path) -> int:
    argv = launcher_cmd("-q", "--nproc_per_node", "2", "--no_local_rank", *flags,
                        "--no_python", "/bin/sh", "-c", WORKER, str(out))
    shell = ["/bin/sh", "-c", f'exec "$@" {redirect}', "sh", *argv]
    return subprocess.run(shell, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=120).returncode


@pytest.mark.parametrize("output", OUTPUT.values(), ids=list(OUTPUT))
@pytest.mark.parametrize("redirect", CLOSED.values(), ids=list(CLOSED))
def test_workers_start_with_0_1_and_2_open(redirect: str, output: List[str],
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    flags = [*output, str(tmp_path / "logs")] if "--enable_each_rank_log" in output else output
    assert _launch(redirect, flags, out) == 0
    for rank in (0, 1):
        lines = (out / f"rank{rank}").read_text().splitlines()
        assert lines[:3] == ["0 open", "1 open", "2 open"], lines
        fd = int(lines[3].split()[-1])
        assert fd >= 3, f"rank {rank}'s checkpoint became fd {fd}"


API_PROGRAM = """
import sys
import hpclaunch

world = hpclaunch.detect_world({}, nproc_per_node=2)
command = hpclaunch.resolve_command("/bin/sh", ["-c", sys.argv[1], sys.argv[2]],
                                    no_python=True, local_rank=False)
sys.exit(hpclaunch.launch(hpclaunch.plan(world, command)).exit_code)
"""


def test_workers_of_an_api_launch_start_with_0_1_and_2_open(tmp_path: Path) -> None:
    # A program calling the API does not run the CLI's start-up: with its fd 0 closed, the
    # launcher's own pipes land there, close-on-exec, and would leave the workers a hole.
    shell = ["/bin/sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-c", API_PROGRAM,
             WORKER, str(tmp_path)]
    result = subprocess.run(shell, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        lines = (tmp_path / f"rank{rank}").read_text().splitlines()
        assert lines[:3] == ["0 open", "1 open", "2 open"], lines
        assert int(lines[3].split()[-1]) >= 3
