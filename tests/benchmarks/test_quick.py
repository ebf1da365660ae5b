"""Smoke test of the benchmark (issues 7, 14): ``benchmarks/run.py --quick`` runs end to end
against hpclaunch alone and prints every row of every group.

No timing is asserted: the figures depend on the machine and its load, and a benchmark
that fails a test on a busy CI runner would only teach people to ignore it. What is
asserted is that every measurement was actually taken (a cell says ERROR otherwise) and
that the table is complete, so a change that breaks a scenario is caught here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import emulate, launchers
from benchmarks.run import build, config
from tests.conftest import ROOT, require

RUN = ROOT / "benchmarks" / "run.py"


def table_rows(stdout: str) -> list[list[str]]:
    """Data rows of the markdown table: ``| group | label | cells ... |``."""
    rows = []
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit():
            rows.append(cells)
    return rows


@pytest.mark.timeout(900)
def test_quick_run_prints_every_row(tmp_path: Path) -> None:
    require(launchers.torch_available(), "torch (pip install torch==2.13.0)")
    require(os.access("/usr/bin/time", os.X_OK), "GNU time (apt-get install -y time)")
    for kind in (emulate.OPENMPI, emulate.MPICH):  # the emulated-host MPI rows
        why = emulate.missing(kind)
        require(why is None, f"{kind} for the benchmark's MPI rows ({why})")
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--launchers", "hpclaunch", "--out",
         str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=880,
        cwd=tmp_path,  # the script must not depend on the working directory
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    _, _, expected = build(config(True, None), launchers.find(["hpclaunch"]), dict(os.environ))
    rows = table_rows(proc.stdout)
    assert [row[1] for row in rows] == [row.label for row in expected], proc.stdout
    assert {row[0] for row in rows} == {str(group) for group in (1, 3, 4, 5, 6, 7, 8)}
    for row in rows:
        hpclaunch, torchrun, deepspeed = row[2], row[3], row[4]
        assert "ERROR" not in " ".join(row), row
        assert not hpclaunch.startswith("skipped"), row  # hpclaunch itself always runs
        # peers are optional here: not selected, not installed, or n/a for dry-runs
        for peer in (torchrun, deepspeed):
            assert peer.startswith(("skipped", "n/a", "—")), row
    assert "## Targets (hpclaunch)" in proc.stdout
    written = list(tmp_path.glob("*-quick.md"))
    assert len(written) == 1 and written[0].read_text() == proc.stdout
    assert list(tmp_path.glob("*-quick.json")), "raw samples were not written"
