"""Elastic mode's stacks: torch's agent starts the workers, and still SIGQUIT dumps every
rank (console and per-rank log) and ``--stall_timeout`` stops a job whose heartbeats stopped
(elastic workers write to the console directly, so only heartbeats count there)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import (
    Fifo,
    free_port,
    kill_all,
    launcher_cmd,
    marked_env,
    pids_of,
    run_launcher,
    wait_no_marked,
)
from tests.dumps import HANG, dumped, hang_line, innermost, read_until, stacks

ELASTIC = ("--enable_elastic_training", "--kill_timeout", "3", "--nproc_per_node", "2")


def test_sigquit_dumps_every_elastic_rank_and_the_job_goes_on(
    torch_available: None, tmp_path: Path, fifo: Fifo, mark: str
) -> None:
    go, logs = tmp_path / "go.fifo", tmp_path / "logs"
    os.mkfifo(go)
    proc = subprocess.Popen(
        launcher_cmd(*ELASTIC, "--master_port", str(free_port()), "--enable_each_rank_log",
                     str(logs), HANG, "gate", "--ready", fifo.path, "--go", str(go)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=marked_env(mark),
    )
    try:
        pids = {int(line.split()[1]): int(line.split()[2]) for line in fifo.expect(2, 120)}
        proc.send_signal(signal.SIGQUIT)
        early = read_until(proc, dumped([0, 1]))
        os.close(os.open(go, os.O_WRONLY))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, early + err.decode()
        found = stacks(early)
        for rank in (0, 1):
            (dump,) = found[rank]
            assert f"stack of rank {rank} (pid {pids[rank]}, on SIGQUIT)" in dump.header
            (frames,) = dump.threads.values()
            assert frames[0].function == "<module>" and frames[-1].file == HANG
            assert any(frame.function == "gate" for frame in frames)
            (log,) = logs.glob(f"*_rank{rank}.log")
            assert f"hpclaunch: stack of rank {rank} (pid {pids[rank]}" in log.read_text()
        assert wait_no_marked(mark) == []
    finally:
        kill_all(pids_of(fifo.lines))
        proc.kill()
        proc.wait()


def test_an_elastic_job_whose_heartbeats_stop_is_a_stall(
    torch_available: None, mark: str
) -> None:
    result = run_launcher(*ELASTIC, "--master_port", str(free_port()), "--stall_timeout", "2",
                          HANG, "heartbeat", "--silent", "--seconds", "600", "--touch-seconds",
                          "2", env=marked_env(mark), timeout=240)
    assert result.returncode == 124, result.stderr
    for rank in (0, 1):
        (dump,) = stacks(result.stderr)[rank]
        assert "stalled" in dump.header
        assert innermost(dump)[-1].line == hang_line("heartbeat")
    assert "stalled: rank(s) 0,1" in result.stderr.strip().splitlines()[-1]
    assert wait_no_marked(mark) == []
