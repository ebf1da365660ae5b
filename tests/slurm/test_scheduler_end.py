"""A worker failing on one node ends the job step on every node, through Slurm (issue 25).

Plain ``srun`` (Slurm's default ``KillOnBadExit=0``) on the session's 3-node test cluster:
before hpclaunch asked Slurm to end the step, a failure on one node left the other nodes'
workers running until the step was cancelled by hand. Workers announce themselves on a FIFO
(``stepworker.py``) and fail only when the test writes to a second one, so every worker is
known to run when the failure happens. Timeouts here are hang guards; how fast the end
spreads is measured in benchmarks/slurm.py.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from tests.conftest import Fifo, kill_all, survivors, wait_gone
from tests.slurm.cluster import SlurmCluster
from tests.slurm.conftest import ROOT, launcher

STEPWORKER = str(Path(__file__).with_name("stepworker.py"))
#: How long a step may take to end everywhere before the test calls it a hang.
HANG_GUARD = 60.0

pytestmark = pytest.mark.timeout(300)


class Step:
    """One ``srun`` of hpclaunch on the cluster, its workers' FIFO and its go FIFO."""

    def __init__(self, cluster: SlurmCluster, tmp_path: Path, srun_args: Sequence[str],
                 hpclaunch_args: Sequence[str], worker_args: Sequence[str],
                 env: Optional[Dict[str, str]] = None, prefix: Sequence[str] = ()) -> None:
        self.cluster = cluster
        self.ready = Fifo(tmp_path / "ready.fifo")
        self.go = tmp_path / "go.fifo"
        os.mkfifo(self.go)
        command = [
            "srun", "--ntasks-per-node=1", *srun_args, *prefix, *launcher(), *hpclaunch_args,
            STEPWORKER, "--ready", self.ready.path, "--go", str(self.go), *worker_args,
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=cluster.client_env(env), cwd=ROOT, stdin=subprocess.DEVNULL,
        )
        self.workers: Dict[int, Tuple[int, int]] = {}  # rank -> (pid, parent pid)
        self.step = ""
        self.output = ""

    def expect_workers(self, count: int) -> None:
        for line in self.ready.expect(count, timeout=HANG_GUARD):
            kind, rank, pid, parent, step, _ = line.split()
            assert kind == "worker", line
            self.workers[int(rank)] = (int(pid), int(parent))
            self.step = step

    def fail(self) -> None:
        with open(self.go, "wb") as handle:
            handle.write(b"x")

    def end(self, timeout: float = HANG_GUARD) -> int:
        """srun's exit status once the step ended by itself (within the hang guard)."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            out, err = self.process.communicate(timeout=HANG_GUARD)
            raise AssertionError(f"the step did not end in {timeout:g} s:\n{out}{err}") from None
        self.output = out + err
        return self.process.returncode

    def cancel(self) -> None:
        if self.step:
            self.cluster.run(["scancel", self.step])

    def pids(self) -> List[int]:
        return [pid for pair in self.workers.values() for pid in pair]

    def close(self) -> None:
        if self.process.poll() is None:
            self.cancel()
            try:
                self.process.communicate(timeout=HANG_GUARD)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
        kill_all(survivors(self.pids()))
        self.ready.close()


@pytest.fixture
def steps() -> Iterator[List[Step]]:
    started: List[Step] = []
    yield started
    for step in started:
        step.close()


def wait_exited(pids: Sequence[int], timeout: float = HANG_GUARD) -> None:
    """Until every one of ``pids`` (not our children) has exited: one pidfd each."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    try:
        waiting = list(fds)
        while waiting:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"processes {list(pids)} still running after {timeout:g} s"
            ready, _, _ = select.select(waiting, [], [], remaining)
            waiting = [fd for fd in waiting if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def failure_lines(output: str) -> List[str]:
    return [line for line in output.splitlines() if "worker failed:" in line]


def test_a_failure_on_the_middle_node_ends_every_node(
    slurm_cluster: SlurmCluster, tmp_path: Path, steps: List[Step]
) -> None:
    """Rank 3 (node 1 of 0-2) exits 3: no worker is left anywhere, srun ends non-zero.

    ``--kill_timeout 600``: a launcher that waited for its grace would trip the hang guard.
    """
    step = Step(slurm_cluster, tmp_path, ["-N3"], ["--nproc_per_node", "2", "--kill_timeout",
                "600"], ["--fail-rank", "3"])
    steps.append(step)
    step.expect_workers(6)
    assert len({parent for _, parent in step.workers.values()}) == 3  # one launcher per node
    step.fail()
    status = step.end()
    assert status != 0, step.output
    node = slurm_cluster.nodes[1]
    # The root cause, once, from the failing node: rank, host, code.
    failures = failure_lines(step.output)
    assert len(failures) == 1, step.output
    assert f"rank 3 (local_rank 1, pid {step.workers[3][0]}) on {node} exited with code 3" in (
        failures[0]
    )
    assert f"rank 3 failed: asking Slurm to end step {step.step} on every node" in step.output
    # Its launcher exits with the worker's code, not killed by its own request's SIGTERM.
    assert f"{node}: task 1: Exited with exit code 3" in step.output
    # The two other launchers say who ended them, not that their own workers failed.
    assert step.output.count(f"got SIGTERM (Slurm is ending step {step.step}") == 2, step.output
    assert wait_gone(step.pids()) == []


def test_no_scheduler_end_leaves_the_other_nodes_running(
    slurm_cluster: SlurmCluster, tmp_path: Path, steps: List[Step]
) -> None:
    """The opt-out keeps Slurm's own behaviour: the failing node's launcher exits, the other
    nodes' workers run on (they still answer a SIGUSR1 sent to the step afterwards)."""
    step = Step(slurm_cluster, tmp_path, ["-N3"], ["--nproc_per_node", "2",
                "--no-scheduler-end"], ["--fail-rank", "3"])
    steps.append(step)
    step.expect_workers(6)
    step.fail()
    wait_exited([step.workers[3][1]])  # the failing node's launcher is gone
    # (scancel then exits non-zero, "Invalid job id specified", because one node of the step
    # has finished, but it signals the others: their answers are the proof.)
    slurm_cluster.run(["scancel", "--signal=USR1", step.step])
    answered = sorted(int(line.split()[1]) for line in step.ready.expect(4, timeout=HANG_GUARD))
    assert answered == [0, 1, 4, 5]
    step.cancel()
    assert step.end() != 0
    assert "asking Slurm to end step" not in step.output
    assert len(failure_lines(step.output)) == 1, step.output


def test_without_scancel_the_failing_node_says_so(
    slurm_cluster: SlurmCluster, tmp_path: Path, steps: List[Step]
) -> None:
    """No scancel on the launcher's PATH: a warning names what is left running."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    step = Step(slurm_cluster, tmp_path, ["-N3"], ["--nproc_per_node", "2"],
                ["--fail-rank", "3"], prefix=["/usr/bin/env", f"PATH={empty}"])
    steps.append(step)
    step.expect_workers(6)
    step.fail()
    wait_exited([step.workers[3][1]])
    step.cancel()
    step.end()
    assert (
        f"scancel is not on PATH: the other nodes of step {step.step} run on until their "
        "workers end"
    ) in step.output
    assert "asking Slurm to end step" not in step.output


def test_srun_kill_on_bad_exit_is_left_to_srun(
    slurm_cluster: SlurmCluster, tmp_path: Path, steps: List[Step]
) -> None:
    """SLURM_KILL_BAD_EXIT=1 (srun --kill-on-bad-exit through the environment): srun ends the
    step itself, so the launcher asks nothing, and still every node ends."""
    step = Step(slurm_cluster, tmp_path, ["-N3"], ["--nproc_per_node", "2", "--log_level",
                "debug"], ["--fail-rank", "3"], env={"SLURM_KILL_BAD_EXIT": "1"})
    steps.append(step)
    step.expect_workers(6)
    step.fail()
    assert step.end() != 0
    assert f"SLURM_KILL_BAD_EXIT=1: srun ends step {step.step}" in step.output
    assert "asking Slurm to end step" not in step.output
    assert wait_gone(step.pids()) == []


def test_a_job_that_succeeds_asks_nothing(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    result = slurm_cluster.run(
        ["srun", "-N3", "--ntasks-per-node=1", *launcher(), "--nproc_per_node", "2",
         "--no_python", "/bin/true"],
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "Slurm" not in result.stderr.replace("slurm world", "")


# -- the job's record ----------------------------------------------------------------------

RECORDER = """
import json, os, sys
import hpclaunch
from hpclaunch.reporter import Reporter
from hpclaunch.spawner import run
from hpclaunch.spawner.events import NoEvents
from hpclaunch.spawner.output.console import Console

class Recorder(NoEvents):
    def __init__(self):
        self.events = []
    def emit(self, name, **fields):
        self.events.append(dict(fields, name=name))
    def close(self):
        pass

out, argv = sys.argv[1], sys.argv[2:]
world = hpclaunch.detect_world(nproc_per_node=2)
plan = hpclaunch.plan(world, argv, kill_timeout=600)
recorder = Recorder()
console = Console()
outcome = run(plan, os.environ, Reporter(), console, events=recorder)
console.close()
events = [e for e in recorder.events if e["name"] == "scheduler_end"]
with open(os.path.join(out, f"{world.node_rank}.json"), "w") as handle:
    json.dump({"status": outcome.exit_code, "events": events}, handle)
sys.exit(outcome.exit_code)
"""


def test_events_record_the_request_and_every_other_node_s_end(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """``scheduler_end``: requested (with the failed rank) on the failing node, ended on the
    others, each naming the step; launched through the API with a recorder of its own."""
    program = tmp_path / "recorded_launch.py"
    program.write_text(RECORDER)
    out = tmp_path / "out"
    out.mkdir()
    ready = Fifo(tmp_path / "ready.fifo")
    go = tmp_path / "go.fifo"
    os.mkfifo(go)
    process = subprocess.Popen(
        ["srun", "-N3", "--ntasks-per-node=1", sys.executable, str(program), str(out),
         STEPWORKER, "--ready", ready.path, "--go", str(go), "--fail-rank", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=slurm_cluster.client_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
    )
    try:
        lines = ready.expect(6, timeout=HANG_GUARD)
        step = lines[0].split()[4]
        with open(go, "wb") as handle:
            handle.write(b"x")
        _, err = process.communicate(timeout=HANG_GUARD)
    finally:
        if process.poll() is None:
            slurm_cluster.run(["scancel", lines[0].split()[4]])
            process.kill()
            process.communicate()
        ready.close()
    records = {int(p.stem): json.loads(p.read_text()) for p in out.glob("*.json")}
    assert sorted(records) == [0, 1, 2], err
    assert records[1]["events"] == [
        {"name": "scheduler_end", "action": "requested", "step": step, "failed_rank": 3}
    ]
    assert records[1]["status"] == 3
    for node in (0, 2):
        assert records[node]["events"] == [
            {"name": "scheduler_end", "action": "ended", "step": step, "failed_rank": None}
        ]
        assert records[node]["status"] == 143


# -- elastic mode ----------------------------------------------------------------------------


def test_elastic_restarts_used_up_end_every_node(
    slurm_cluster: SlurmCluster, tmp_path: Path, steps: List[Step], torch_available: None
) -> None:
    """Rank 3 fails in every round; after its one restart the job ends on both nodes (the
    other node's workers would otherwise run on: nothing in them notices)."""
    step = Step(slurm_cluster, tmp_path, ["-N2"], ["--enable_elastic_training",
                "--nproc_per_node", "2", "--max_restarts", "1", "--kill_timeout", "600"],
                ["--fail-rank", "3"])
    steps.append(step)
    pids: List[int] = []
    for _ in range(2):  # the first round, then the round after the restart
        step.expect_workers(4)
        pids += step.pids()
        step.fail()
    assert step.end() != 0, step.output
    assert len(failure_lines(step.output)) == 1, step.output
    assert "rank 3 (local_rank " in failure_lines(step.output)[0]
    assert "exited with code 3" in failure_lines(step.output)[0]
    assert "gave up after 1 restart(s)" in step.output
    assert f"rank 3 failed: asking Slurm to end step {step.step} on every node" in step.output
    assert step.output.count(f"got SIGTERM (Slurm is ending step {step.step}") == 1, step.output
    assert wait_gone(pids) == []


def test_elastic_finish_while_another_node_restarts_ends_with_a_message(
    slurm_cluster: SlurmCluster, tmp_path: Path, steps: List[Step], torch_available: None
) -> None:
    """Ranks 0 and 1 finish (exit 0); only then rank 3, on the other node, fails and its
    agent restarts. The finished node will never join another round: instead of both agents
    waiting for each other (torch's exit barrier, 300 s; the restarting agent's join, 600 s),
    the restart fails at once with a message, and the step ends on every node."""
    step = Step(slurm_cluster, tmp_path, ["-N2"], ["--enable_elastic_training",
                "--nproc_per_node", "2", "--kill_timeout", "600"],
                ["--fail-rank", "3", "--once", "--finish-ranks", "0,1"])
    steps.append(step)
    step.expect_workers(4)
    wait_exited([step.workers[0][0], step.workers[1][0]])
    step.fail()
    assert step.end() != 0, step.output
    assert "RendezvousClosedError" in step.output
    assert "no new round can form" in step.output
    assert f"asking Slurm to end step {step.step} on every node" in step.output
    assert wait_gone(step.pids()) == []
