"""Messages that send the user the right way: a script whose ``#!`` interpreter is missing is
not reported as a missing script, and elastic mode's flags without elastic mode are refused
instead of silently ignored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.conftest import ROOT, error_line, run_launcher

MISSING = "/nonexistent/hpclaunch-test-interpreter"

PROGRAM = """
import json, sys
import hpclaunch
from hpclaunch.model.plan import Command

world = hpclaunch.detect_world({}, nproc_per_node=1)
command = Command(script=sys.argv[1], args=(), mode="exec", pass_local_rank=False)
outcome = hpclaunch.launch(hpclaunch.plan(world, command))
print(json.dumps({"exit": outcome.exit_code, "detail": outcome.failure.detail}))
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.sh"
    path.write_text(f"#!{MISSING} -u\ntouch {tmp_path}/spawned\n")
    path.chmod(0o755)
    return path


def test_a_missing_interpreter_is_named_not_the_script(script: Path, tmp_path: Path) -> None:
    result = run_launcher("--no_python", str(script))
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert MISSING in line and "#!" in line
    assert "No such file" not in line
    assert not (tmp_path / "spawned").exists()


def test_a_worker_whose_interpreter_vanished_is_reported_so(script: Path) -> None:
    # The API takes a ready Command without resolve_command's check: exec itself fails,
    # and the failure summary must still blame the interpreter, not the script.
    result = subprocess.run([sys.executable, "-c", PROGRAM, str(script)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["exit"] == 127
    assert MISSING in report["detail"] and "interpreter" in report["detail"]
    assert "No such file or directory" not in report["detail"]


ELASTIC_ONLY = {
    "max_restarts": ["--max_restarts", "2"],
    "min_elastic_nodes": ["--min_elastic_nodes", "2"],
    "max_elastic_nodes": ["--max_elastic_nodes", "2"],
    "rdzv_conf": ["--rdzv_conf", "join_timeout=5"],
}


@pytest.mark.parametrize("flag", ELASTIC_ONLY.values(), ids=list(ELASTIC_ONLY))
def test_elastic_flags_without_elastic_mode_are_refused(flag: List[str], tmp_path: Path) -> None:
    result = run_launcher(*flag, "--no_python", "/bin/sh", "-c", f"touch {tmp_path}/spawned")
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert flag[0] in line and "--enable_elastic_training" in line
    assert not (tmp_path / "spawned").exists()


def test_elastic_flags_at_their_static_meaning_are_accepted() -> None:
    # DeepSpeed's spelling of "not given" (-1), and 0 restarts, which is what static mode does.
    result = run_launcher("-q", "--max_restarts", "0", "--min_elastic_nodes", "-1",
                          "--max_elastic_nodes", "-1", "--no_python", "/bin/true")
    assert result.returncode == 0, result.stderr
