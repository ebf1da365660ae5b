"""A stall on a real Slurm cluster: node 0's ranks go quiet; its launcher asks Slurm to
deliver SIGQUIT to the step's other launchers (``scancel --signal=QUIT <job>.<step>``), so
the job's output holds node 1's stacks too, although node 1's ranks were still busy."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.conftest import MARK_VAR, processes_with_mark
from tests.dumps import HANG, hang_line, innermost, stacks
from tests.slurm.cluster import SlurmCluster, wait_until
from tests.slurm.conftest import ROOT, launcher


def test_a_stalled_node_has_every_node_dump_its_stacks(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    mark = uuid.uuid4().hex
    result = slurm_cluster.run(
        ["srun", "-N2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
         f"--output={tmp_path}/%t.out", f"--error={tmp_path}/%t.err",
         *launcher(), "--nproc_per_node", "2", "--stall_timeout", "3", "--kill_timeout", "1",
         HANG, "node0-stalls"],
        env={MARK_VAR: mark}, timeout=180, cwd=ROOT,
    )
    node0, node1 = ((tmp_path / f"{task}.err").read_text() for task in (0, 1))
    assert result.returncode != 0, result.stderr
    assert "stalled: rank(s) 0,1 on " in node0, node0
    assert "scancel --signal=QUIT" in node0
    assert "warning: scancel" not in node0  # it said nothing: it worked
    # Node 0's launcher is a task of the step too: its own SIGQUIT came back before it ended.
    assert "did not deliver SIGQUIT" not in node0
    dumped0, dumped1 = stacks(node0), stacks(node1)
    for rank in (0, 1):
        (dump,) = dumped0[rank]
        assert "stalled" in dump.header
        assert innermost(dump)[-1].line == hang_line("stalled node")
    assert "got SIGQUIT: dumping the stacks of 2 worker(s)" in node1, node1
    for rank in (2, 3):
        (dump,) = dumped1[rank]
        assert "on SIGQUIT" in dump.header
        assert innermost(dump)[-1].line == hang_line("busy node")
    assert node0.strip().splitlines()[-1].endswith("(exit 124)")
    wait_until(lambda: not processes_with_mark(mark), 30, "every worker of the job to be gone")
