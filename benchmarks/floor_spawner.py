"""The spawning floor: the least a Python launcher must do to start N workers and wait.

    python floor_spawner.py N [--forward] -- COMMAND [ARGS...]

It forks every worker first (each child only joins its own process group and ``execve``s
with its precomputed environment: RANK, LOCAL_RANK, WORLD_SIZE), then collects the exec
statuses (a close-on-exec pipe per child: EOF means the exec happened), then waits. With
``--forward`` a SIGTERM is sent on to every worker's process group at once, and the floor
exits 143 once they are gone. No output relay, no logs, no teardown policy: what
hpclaunch adds beyond this is what benchmarks/run.py's spawn and SIGTERM rows measure.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Dict, List


def spawn(command: List[str], envs: List[Dict[str, str]]) -> List[int]:
    """Fork all, then read every exec status; raises if an exec failed."""
    children: List[int] = []
    status_fds: List[int] = []
    for env in envs:
        read_fd, write_fd = os.pipe()  # both close-on-exec (PEP 446)
        pid = os.fork()
        if pid == 0:  # child: as little as possible before exec
            try:
                os.setpgid(0, 0)
                os.execve(command[0], command, env)
            except OSError as exc:
                os.write(write_fd, str(exc.errno).encode())
            finally:
                os._exit(127)
        try:
            os.setpgid(pid, pid)  # also from the parent: a signal may come before the child runs
        except OSError:
            pass
        os.close(write_fd)
        children.append(pid)
        status_fds.append(read_fd)
    for fd in status_fds:
        failed = os.read(fd, 16)
        os.close(fd)
        if failed:
            raise OSError(int(failed), f"exec of {command[0]} failed")
    return children


def main() -> int:
    count = int(sys.argv[1])
    forward = sys.argv[2] == "--forward"
    command = sys.argv[sys.argv.index("--") + 1 :]
    envs = [
        dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(count))
        for r in range(count)
    ]
    children: List[int] = []
    got_term = []

    def on_term(signum: int, frame: object) -> None:
        got_term.append(signum)
        for pid in children:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    if forward:
        signal.signal(signal.SIGTERM, on_term)
    children.extend(spawn(command, envs))
    status = 0
    for pid in children:
        while True:
            try:
                _, code = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        status = status or os.waitstatus_to_exitcode(code)
    return 128 + signal.SIGTERM if got_term else (status if status >= 0 else 128 - status)


if __name__ == "__main__":
    raise SystemExit(main())
