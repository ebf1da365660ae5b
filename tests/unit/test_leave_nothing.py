"""The test command's leave-nothing check (scripts/leave-nothing.py) sees what a run adds."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = str(ROOT / "scripts" / "leave-nothing.py")


def check(snapshot: Path, ci: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CI=ci)
    return subprocess.run(
        [sys.executable, SCRIPT, "check", str(snapshot)], capture_output=True, text=True,
        env=env, timeout=60,
    )


def test_a_new_temp_file_is_listed_and_fails_only_under_ci(tmp_path: Path) -> None:
    snapshot = tmp_path / "before.json"
    subprocess.run([sys.executable, SCRIPT, "snapshot", str(snapshot)], check=True, timeout=60)
    left = Path(tempfile.gettempdir()) / f"left-behind-{uuid.uuid4().hex}"
    left.write_text("")
    try:
        in_ci = check(snapshot, "true")
        local = check(snapshot, "")
    finally:
        left.unlink()
    assert in_ci.returncode == 1
    assert f"  temp dir entry: {left}" in in_ci.stderr.splitlines()
    assert local.returncode == 0 and str(left) in local.stderr
    after = check(snapshot, "true")
    assert str(left) not in after.stdout + after.stderr
