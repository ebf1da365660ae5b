"""``--stall_timeout``: a node whose every counting rank went quiet is reported, dumped and
stopped (exit 124); output or a heartbeat touch keeps a job alive. Real launchers, real torch
gloo, real worker processes; "nothing left running" is checked by a mark every descendant
carries, not by the launcher's bookkeeping.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import (
    ROOT,
    Fifo,
    free_port,
    kill_all,
    marked_env,
    run_launcher,
    wait_no_marked,
)
from tests.dumps import HANG, hang_line, innermost, read_until, stacks

STALLED = re.compile(r"made no progress \(output or heartbeat\) for ([\d.]+) s")


def test_a_rank_that_never_joins_the_all_reduce_is_a_stall(
    torch_available: None, mark: str
) -> None:
    """The issue's acceptance: rank 1 sleeps instead of joining; rank 0 waits in gloo."""
    result = run_launcher("--nproc_per_node", "2", "--master_port", str(free_port()),
                          "--stall_timeout", "5", "--kill_timeout", "2", HANG, "allreduce",
                          env=marked_env(mark), timeout=240)
    assert result.returncode == 124, result.stderr
    quiet = STALLED.search(result.stderr)
    assert quiet is not None, result.stderr
    assert 5.0 <= float(quiet[1]) < 8.0  # found within a few seconds of the timeout
    found = stacks(result.stderr)
    (rank0,) = found[0]
    (rank1,) = found[1]
    waiting = [frames for frames in rank0.threads.values()
               if any(f.file == HANG and f.line == hang_line("allreduce") for f in frames)]
    assert len(waiting) == 1, rank0
    below = waiting[0][[f.line for f in waiting[0]].index(hang_line("allreduce")) + 1:]
    assert any("torch/distributed" in f.file and f.function == "all_reduce" for f in below)
    assert any(f.file == HANG and f.line == hang_line("sleep") for f in innermost(rank1))
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("hpclaunch: stalled: rank(s) 0,1 on ") and "exit 124" in summary
    assert wait_no_marked(mark) == []


def test_heartbeats_keep_a_silent_job_alive(mark: str) -> None:
    result = run_launcher("--nproc_per_node", "2", "--stall_timeout", "2", HANG, "heartbeat",
                          "--seconds", "6", env=marked_env(mark))
    assert result.returncode == 0, result.stderr
    assert "stalled" not in result.stderr
    assert sorted(result.stdout.splitlines()) == [
        "[rank0]: rank 0 started (heartbeat)", "[rank1]: rank 1 started (heartbeat)"]


def test_without_heartbeats_the_same_job_stalls(mark: str) -> None:
    result = run_launcher("--nproc_per_node", "2", "--stall_timeout", "2", "--kill_timeout",
                          "1", HANG, "heartbeat", "--seconds", "600", "--touch-seconds", "0",
                          env=marked_env(mark))
    assert result.returncode == 124, result.stderr
    for rank in (0, 1):
        assert innermost(stacks(result.stderr)[rank][0])[-1].line == hang_line("heartbeat")
    assert wait_no_marked(mark) == []


def test_a_heartbeat_alone_makes_a_rank_count(mark: str) -> None:
    """A rank that never prints counts from its first touch; when the touches stop, the
    stall fires."""
    result = run_launcher("--nproc_per_node", "1", "--stall_timeout", "2", "--kill_timeout",
                          "1", HANG, "heartbeat", "--silent", "--seconds", "600",
                          "--touch-seconds", "2", env=marked_env(mark))
    assert result.returncode == 124, result.stderr
    assert result.stdout == ""
    assert wait_no_marked(mark) == []


def test_ranks_that_never_made_progress_do_not_count(mark: str) -> None:
    result = run_launcher("--nproc_per_node", "2", "--stall_timeout", "1", HANG, "heartbeat",
                          "--silent", "--seconds", "4", "--touch-seconds", "0",
                          env=marked_env(mark))
    assert result.returncode == 0, result.stderr
    assert "stalled" not in result.stderr


def test_a_console_that_holds_the_workers_back_is_not_a_stall(tmp_path: Path) -> None:
    """Back-pressure: the launcher's stdout is a pipe nobody reads for longer than the
    timeout; the workers block on their writes. That is the reader's stall, not theirs."""
    writer = tmp_path / "writer.py"
    writer.write_text("import sys\nfor _ in range(40000):\n    print('x' * 200)\n")
    reader = subprocess.Popen(  # reads nothing until the launcher is done
        [sys.executable, "-m", "hpclaunch", "--nproc_per_node", "2", "--stall_timeout", "1",
         str(writer)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    err = read_until(reader, lambda text: "local world" in text)
    # 16 MB of output against a 4 MiB console buffer: the relay must pause. Wait past the
    # timeout without reading stdout (bounded: the stall would fire within 1 s).
    try:
        reader.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    out, rest = reader.communicate(timeout=120)
    assert reader.returncode == 0, err + rest.decode()
    assert "stalled" not in err + rest.decode()
    assert len(out.splitlines()) == 80000


EVENTS = """
import json, sys
from hpclaunch import detect_world, plan
from hpclaunch.reporter import Reporter
from hpclaunch.spawner import run
from hpclaunch.spawner.output.console import Console

class Recorder:
    def __init__(self): self.events = []
    def emit(self, name, **fields): self.events.append([name, fields])
    def close(self): pass

recorder = Recorder()
the_plan = plan(detect_world({}, nproc_per_node=2), sys.argv[1:], stall_timeout=3,
                kill_timeout=1)
console = Console()
outcome = run(the_plan, dict(__import__("os").environ), Reporter(), console, recorder)
console.close()
print(json.dumps({"exit": outcome.exit_code, "events": recorder.events}))
"""


def test_stall_and_dump_events(tmp_path: Path, fifo: Fifo, mark: str) -> None:
    """Through the spawner's events: a SIGQUIT's dump, then the stall and its dump."""
    go = tmp_path / "go.fifo"
    os.mkfifo(go)  # never opened for writing: the workers wait at the gate, quiet
    proc = subprocess.Popen(
        [sys.executable, "-c", EVENTS, HANG, "gate", "--ready", fifo.path, "--go", str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=marked_env(mark), cwd=ROOT,
    )
    try:
        fifo.expect(2)
        proc.send_signal(signal.SIGQUIT)
        out, err = proc.communicate(timeout=120)
        report = json.loads(out.decode().splitlines()[-1])
        assert report["exit"] == 124, err.decode()
        names = [[name, fields.get("reason")] for name, fields in report["events"]]
        assert names == [["dump", "sigquit"], ["stall", None], ["dump", "stall"]]
        stall = report["events"][1][1]
        assert stall["ranks"] == [0, 1] and stall["quiet_seconds"] >= 3
        assert report["events"][0][1]["ranks"] == [0, 1]
        assert wait_no_marked(mark) == []
    finally:
        kill_all([proc.pid])
        proc.wait()
