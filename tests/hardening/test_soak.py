"""Soak: SIGKILL the launcher at random moments; nothing it started may survive it.

Each launch runs 4 workers that each leave a background child, with ``--save_pid``, and is
SIGKILLed 0-300 ms after it was started: before its watchdog exists, while it writes its
PID file, while it forks workers, while workers fork their children, or while they run.
Afterwards no process carrying the test's mark (workers, their children, the watchdogs)
may be left, and no PID file (or draft of one). The random moments come from a seeded
generator; the seed is in the failure message, to replay a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import List, Tuple

from tests.conftest import (
    kill_all,
    launcher_cmd,
    marked_env,
    processes_with_mark,
    wait_no_marked,
    wait_until_empty,
)

LAUNCHES = 160
AT_ONCE = 4
#: Each worker leaves a child that outlives it by far, then waits for it.
WORKER_SCRIPT = "sleep 600 & sleep 600"


def test_sigkill_at_random_moments_leaves_nothing(mark: str, tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    env = marked_env(mark, TMPDIR=str(tmp_path))
    argv = ["--nproc_per_node", "4", "--no_local_rank", "--no_python", "/bin/sh", "-c",
            WORKER_SCRIPT]
    try:
        for first in range(0, LAUNCHES, AT_ONCE):
            batch: List[Tuple[float, subprocess.Popen[bytes]]] = []
            for n in range(first, min(first + AT_ONCE, LAUNCHES)):
                proc = subprocess.Popen(
                    launcher_cmd("--save_pid", str(100000 + n), *argv),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                )
                batch.append((time.monotonic() + rng.uniform(0.0, 0.3), proc))
            for kill_at, proc in sorted(batch, key=lambda item: item[0]):
                time.sleep(max(0.0, kill_at - time.monotonic()))  # the fault's moment
                proc.send_signal(signal.SIGKILL)
            for _, proc in batch:
                proc.wait(timeout=60)
        left = wait_no_marked(mark, timeout=30)
        assert left == [], f"survivors {left} (seed {seed})"
        pid_files = sorted(p.name for p in tmp_path.iterdir() if ".deepspeed" in p.name)
        assert pid_files == [], f"PID files left: {pid_files} (seed {seed})"
    finally:
        kill_all(processes_with_mark(mark))


def test_sigkill_as_soon_as_the_pid_file_appears_leaves_no_pid_file(tmp_path: Path) -> None:
    """The moment the PID file exists, whoever can remove it after a SIGKILL must exist too.

    The launcher is killed as soon as its PID file shows up (a tight stat loop): if the file
    were written before the watchdog started, nobody would be left to remove it.
    """
    env = dict(os.environ, TMPDIR=str(tmp_path))
    for n in range(20):
        pid_file = tmp_path / f"{200000 + n}.deepspeed"
        proc = subprocess.Popen(
            launcher_cmd("--save_pid", str(200000 + n), "--no_python", "/bin/sleep", "600"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        try:
            while not pid_file.exists() and proc.poll() is None:
                pass  # the fault is injected at the first moment the file is seen
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        leftover = wait_until_empty(
            lambda: [p.name for p in tmp_path.iterdir() if ".deepspeed" in p.name], 10
        )
        assert leftover == [], f"launch {n}: {leftover}"
