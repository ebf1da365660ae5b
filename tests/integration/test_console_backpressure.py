"""A slow console reader loses nothing: while it lives, the launcher waits for it (as a
terminal would), delivers the failure summary after the workers' output, and exits with the
job's status. Only a SIGINT/TERM/HUP from outside lets it go with output undelivered, and
then it says how many bytes, on stderr when that is another file, and in its event record.

Real pipes that the test does not read (``| less``, a paused terminal, a slow file system
behind the console); workers report on a FIFO; waits are bounded by a hang guard.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from tests.conftest import ROOT, Fifo, is_alive, launcher_cmd, pids_of, wait_until_empty

HANG_GUARD = 120.0
#: Lines per rank: the two ranks' prefixed output (~3 MB) fits the launcher's buffer, so
#: the workers finish while nothing is read and the launcher holds all of it.
LINES = 100_000
#: How long nobody reads: longer than the 2 x 5 s the launcher used to wait before it
#: dropped what it held and exited 0.
READER_PAUSE = 11.0


def _worker(fifo: Fifo, code: str = "0") -> List[str]:
    return ["--no_python", "/bin/sh", "-c",
            f'seq 1 {LINES}; echo "done $RANK $$" > {fifo.path}; exit $(( RANK * {code} ))']


def _expected(rank: int) -> bytes:
    return b"".join(b"[rank%d]: %d\n" % (rank, i) for i in range(1, LINES + 1))


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _rank_lines(output: bytes, rank: int) -> List[bytes]:
    prefix = b"[rank%d]: " % rank
    return [line for line in output.split(b"\n") if line.startswith(prefix)]


def test_a_slow_reader_gets_every_line_and_the_summary_last(tmp_path: Path) -> None:
    # Two launches at once (one pause for both): in one both ranks succeed; in the other
    # rank 1 exits 3 once its lines are written (rank 0 may be torn down before it has
    # written all of its own).
    ok, failing = Fifo(tmp_path / "ok"), Fifo(tmp_path / "failing")
    launches: Dict[str, Tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, worker, together in (
            ("ok", _worker(ok), False),
            ("failing", ["--no_python", "/bin/sh", "-c",
                         f'seq 1 {LINES}; [ $RANK = 1 ] || exec sleep 600; '
                         f'echo "done $RANK $$" > {failing.path}; exit 3'], True),
        ):
            read_end, write_end = os.pipe()
            proc = subprocess.Popen(
                launcher_cmd("--nproc_per_node", "2", "--no_local_rank", *worker),
                stdout=write_end, stderr=write_end if together else subprocess.DEVNULL,
            )
            os.close(write_end)
            launches[name] = (proc, read_end)
        ok.expect(2, timeout=HANG_GUARD)  # every line written
        failing.expect(1, timeout=HANG_GUARD)
        time.sleep(READER_PAUSE)  # the slow reader under test, not a synchronisation
        for name, (proc, _) in launches.items():
            assert proc.poll() is None, f"{name}: the launcher gave up on its reader"
        outputs = {name: _read_all(fd) for name, (_, fd) in launches.items()}
        statuses = {name: proc.wait(timeout=HANG_GUARD) for name, (proc, _) in launches.items()}
    finally:
        ok.close()
        failing.close()
        for proc, fd in launches.values():
            if proc.poll() is None:
                proc.kill()
            os.close(fd)
    assert statuses == {"ok": 0, "failing": 3}
    for rank in (0, 1):
        assert b"\n".join(_rank_lines(outputs["ok"], rank)) + b"\n" == _expected(rank)
    output = outputs["failing"]
    assert b"\n".join(_rank_lines(output, 1)) + b"\n" == _expected(1)
    summary = output.index(b"hpclaunch: worker failed: rank 1")
    assert output.rindex(b"[rank1]: ") < summary and output.rindex(b"[rank0]: ") < summary


def test_sigterm_while_waiting_for_a_slow_reader_says_how_much_it_dropped(
    tmp_path: Path,
) -> None:
    fifo = Fifo(tmp_path / "done")
    read_end, write_end = os.pipe()
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            launcher_cmd("--nproc_per_node", "2", "--no_local_rank", *_worker(fifo)),
            stdout=write_end, stderr=err,
        )
    os.close(write_end)
    try:
        workers = pids_of(fifo.expect(2, timeout=HANG_GUARD), "done")
        # Reaped (not even a zombie): the launcher's loop is over and it only waits on the
        # console now. /proc has no event for this; the wait only confirms it.
        assert wait_until_empty(lambda: [p for p in workers if os.path.exists(f"/proc/{p}")],
                                HANG_GUARD) == []
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=HANG_GUARD)  # without anyone reading
        delivered = _read_all(read_end)
    finally:
        fifo.close()
        if proc.poll() is None:
            proc.kill()
        os.close(read_end)
    assert status == 0  # the job ran to success; the signal cut the output short
    total = len(_expected(0)) + len(_expected(1))
    stderr = err_path.read_text()
    match = re.search(r"output not delivered to the console: (\d+) bytes \(stopped by SIGTERM\)",
                      stderr)
    assert match, stderr
    assert int(match.group(1)) == total - len(delivered)
    assert int(match.group(1)) > 0


RECORDING_PROGRAM = """
import json, sys
import hpclaunch
from hpclaunch.spawner import run
from hpclaunch.spawner.inbox import hold_signals
from hpclaunch.spawner.output.console import Console

class Record:
    def __init__(self, path):
        self.path = path
    def emit(self, name, **fields):
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"event": name, **fields}) + "\\n")
    def next_timeout(self):
        return None
    def on_wake(self, progress):
        pass
    def close(self):
        pass

inbox = hold_signals()
world = hpclaunch.detect_world({}, nproc_per_node=2)
command = hpclaunch.resolve_command("/bin/sh", ["-c", sys.argv[2]], no_python=True,
                                    local_rank=False)
plan = hpclaunch.plan(world, command)
console = Console()
reporter = hpclaunch.Reporter().through(console.message)
outcome = run(plan, dict(), reporter, console, events=Record(sys.argv[1]), inbox=inbox)
console.close(inbox)
sys.exit(outcome.exit_code)
"""


def test_output_dropped_at_a_stop_signal_is_an_event(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "ready")
    events = tmp_path / "events.jsonl"
    worker = f'seq 1 {LINES}; echo "ready $RANK $$" > {fifo.path}; exec sleep 600'
    read_end, write_end = os.pipe()
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", RECORDING_PROGRAM, str(events), worker],
                                stdout=write_end, stderr=err, cwd=ROOT)
    os.close(write_end)
    try:
        workers = pids_of(fifo.expect(2, timeout=HANG_GUARD), "ready")
        proc.send_signal(signal.SIGTERM)  # workers running, console not read
        status = proc.wait(timeout=HANG_GUARD)
        delivered = _read_all(read_end)
    finally:
        fifo.close()
        if proc.poll() is None:
            proc.kill()
        os.close(read_end)
    assert status == 128 + signal.SIGTERM
    assert not [pid for pid in workers if is_alive(pid)]
    records = [json.loads(line) for line in events.read_text().splitlines()]
    dropped = [r for r in records if r["event"] == "output_dropped"]
    assert [r["reason"] for r in dropped] == ["stopped by SIGTERM"]
    # Every byte the workers wrote was either delivered or counted as dropped.
    assert dropped[0]["bytes"] == len(_expected(0)) + len(_expected(1)) - len(delivered)
