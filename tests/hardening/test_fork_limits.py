"""fork() failing half-way through starting the workers (a process limit reached): one line
naming the limit and how many workers started, the normal teardown (SIGTERM, then the
--kill_timeout grace), exit status 71 (EX_OSERR, docs/cli.md), no traceback.

The limits are real: a pids cgroup of its own (``pids.max``, as Slurm or a container sets
it), and ``RLIMIT_NPROC`` (``prlimit --nproc``) for a user of the test's own that has no
other process. The launcher is started with SIGTERM blocked, so its workers are too: the
SIGTERM of the teardown then stays pending in each of them, where the test reads it
(``/proc/<pid>/status``), instead of killing them before anyone could look. A second
SIGTERM to the launcher then ends the grace at once (SIGKILL).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from tests.conftest import (
    Fifo,
    kill_all,
    launcher_cmd,
    marked_env,
    processes_with_mark,
    require,
    wait_no_marked,
    wait_until_empty,
)

pytestmark = pytest.mark.root  # mounts / a pids cgroup and another user

WORKERS = 16
#: Processes the limit allows: the launcher, its watchdog, and 8 workers.
ALLOWED = 10
STARTED = ALLOWED - 2
#: A test user with no other process on the machine (RLIMIT_NPROC counts per user).
TEST_UID = 61_021


def _sigterm_pending(pid: int) -> bool:
    """SIGTERM is pending in the process (blocked there, so it has not acted)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
    except FileNotFoundError:
        raise AssertionError(f"worker {pid} is gone: killed without the SIGTERM grace") from None
    bit = 1 << (signal.SIGTERM - 1)
    return any(int(fields[name].strip(), 16) & bit for name in ("ShdPnd", "SigPnd"))


def _run_limited(prefix: List[str], fifo: Fifo, mark: str) -> Tuple[int, str]:
    """Start 16 workers under ``prefix`` (which applies the limit), check the teardown;
    the launcher's status and stderr."""
    worker = f'echo "worker $RANK $$" > {fifo.path}; exec sleep 60'
    argv = [*prefix, *launcher_cmd("--kill_timeout", "60", "--nproc_per_node", str(WORKERS),
                                   "--no_local_rank", "--no_python", "/bin/sh", "-c", worker)]
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=marked_env(mark), cwd="/")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        pids = [int(line.split()[2]) for line in fifo.expect(STARTED, timeout=120)]
        # Every started worker got the teardown's SIGTERM (pending: blocked in them).
        assert wait_until_empty(lambda: [p for p in pids if not _sigterm_pending(p)], 60) == []
        assert proc.poll() is None  # in the --kill_timeout grace, not killing at once
        proc.send_signal(signal.SIGTERM)  # a second one: kill now
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_all(processes_with_mark(mark))
    assert wait_no_marked(mark) == []
    return proc.returncode, err


def _check(status: int, err: str, limit: str) -> None:
    assert status == 71, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if f"{STARTED} of {WORKERS}" in line]
    assert len(errors) == 1, err
    assert f"cannot start rank {STARTED}: fork failed" in errors[0]
    assert limit in errors[0], errors[0]


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    require(os.geteuid() == 0, "root (a pids cgroup of the test's own)")
    name = f"hpclaunch-test-{os.getpid()}"
    v1, v2 = Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")
    if (v1 / "cgroup.procs").exists():
        group = v1 / name
    else:
        controllers = (v2 / "cgroup.subtree_control").read_text().split() if (
            v2 / "cgroup.subtree_control").exists() else []
        require("pids" in controllers, "a pids cgroup controller")
        group = v2 / name
    group.mkdir()
    try:
        (group / "pids.max").write_text(str(ALLOWED))
        yield group
    finally:
        group.rmdir()  # empty by now: the test waited for every process of its own


def test_a_pids_cgroup_limit_mid_spawn(pids_cgroup: Path, tmp_path: Path, mark: str) -> None:
    fifo = Fifo(tmp_path / "ready")
    enter = ["/bin/sh", "-c", f'echo $$ > {pids_cgroup}/cgroup.procs && exec "$@"', "sh"]
    try:
        status, err = _run_limited(enter, fifo, mark)
    finally:
        fifo.close()
    _check(status, err, f"the pids cgroup {pids_cgroup} allows {ALLOWED} processes (pids.max")


def test_rlimit_nproc_mid_spawn(mark: str) -> None:
    require(os.geteuid() == 0 and shutil.which("setpriv") is not None
            and shutil.which("prlimit") is not None, "root, setpriv(1) and prlimit(1)")
    # pytest's tmp_path is root's alone (0700 above it): the user's FIFO lives in a
    # directory of the session's temp dir that the user can reach.
    shared = Path(tempfile.mkdtemp(prefix="fork-limits-"))
    shared.chmod(0o777)
    fifo = Fifo(shared / "ready")
    os.chmod(fifo.path, 0o666)
    as_user = ["prlimit", f"--nproc={ALLOWED}", "--", "setpriv", f"--reuid={TEST_UID}",
               f"--regid={TEST_UID}", "--clear-groups", "--"]
    try:
        status, err = _run_limited(as_user, fifo, mark)
    finally:
        fifo.close()
        shutil.rmtree(shared)
    _check(status, err, f"RLIMIT_NPROC ('ulimit -u') allows user {TEST_UID} {ALLOWED} processes")
