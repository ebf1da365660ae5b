"""Smoke test of ``benchmarks/slurm.py`` (issue 25): one repetition of its hpclaunch rows on
the Slurm cluster it starts, every row measured.

No timing is asserted (the benchmark's targets live in its results, not here): what is
asserted is that each row was measured (no ERROR cell, no "never" for hpclaunch, whose
failure and scancel rows must end every worker) and that the script cleaned up after itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.slurm import ROWS
from tests.conftest import ROOT, require
from tests.slurm.cluster import missing_programs

SCRIPT = ROOT / "benchmarks" / "slurm.py"
MEASURED = ("fail", "fail-K", "request", "request-plain", "scancel", "start")


@pytest.mark.timeout(600)
def test_one_repetition_measures_every_hpclaunch_row(tmp_path: Path) -> None:
    missing = missing_programs()
    require(not missing, f"Slurm ({', '.join(missing)}): run scripts/install-slurm.sh")
    require(os.geteuid() == 0, "the benchmark's Slurm cluster needs root")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--reps", "1", "--elastic-reps", "0", "--launchers",
         "hpclaunch", "--no-mpi", "--rows", ",".join(MEASURED), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=580, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = dict(ROWS)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines()
             if line.startswith("| ")}
    for key in MEASURED:
        row = lines[labels[key]]
        hpclaunch = row.split(" | ")[1]
        assert hpclaunch.endswith("ms") or hpclaunch.endswith(" s"), row
        assert "ERROR" not in row and "never" not in hpclaunch, row
    assert list(tmp_path.glob("*-slurm.md")), "no results file"
