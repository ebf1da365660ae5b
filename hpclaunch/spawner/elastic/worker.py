"""The first program each elastic worker runs: finish the worker's setup, then exec the script.

torch's elastic agent starts workers with a plain ``Popen`` (own session, its own env
variables), which leaves four things of hpclaunch's contract undone. This file does them in
the worker's own process, then ``exec``s the user's command in place (same PID, so the
agent's bookkeeping, signals and exit codes are untouched):

* ``PR_SET_PDEATHSIG=SIGKILL``: the worker dies with the agent, so a SIGKILLed launcher
  (whose agent dies with *it*) leaves no worker behind even before the watchdog acts;
* ``CROSS_RANK``/``CROSS_SIZE``/``LOCAL_SIZE`` from the agent's ``GROUP_RANK``/
  ``GROUP_WORLD_SIZE``/``LOCAL_WORLD_SIZE`` (only known after each rendezvous), plus this
  local rank's fixed variables from the plan (``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``);
* the per-rank log ``<timestamp>_rank<RANK>.log``, named by the global rank the rendezvous
  assigned, opened for appending (a restarted worker adds to its log) and never through a
  symlink;
* the core binding of ``--bind_cores_to_rank``.

The worker's own setup (:func:`become_worker`) is the same function static workers run in
the launcher's forked child, so the two cannot drift apart.

It is run as ``python -I -S worker.py CONFIG -- argv...``: standard library only, no
site-packages, no hpclaunch import, so it costs a few milliseconds per worker start.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence

PR_SET_PDEATHSIG = 1

#: Upper bound for closing inherited descriptors (``closerange`` uses close_range(2)).
MAX_FD = 1 << 30

#: Python ignores these at start-up and an ignored disposition survives exec: without a
#: reset a worker (or a shell pipeline inside it) would never die of a broken pipe.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)

#: Variables hpclaunch derives from the agent's: contract name -> torch name.
DERIVED = {"CROSS_RANK": "GROUP_RANK", "CROSS_SIZE": "GROUP_WORLD_SIZE",
           "LOCAL_SIZE": "LOCAL_WORLD_SIZE"}

_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def become_worker(
    argv: Sequence[str],
    env: Mapping[str, str],
    parent: int,
    arm_death_signal: Callable[[], None],
    cpus: Optional[Sequence[int]] = None,
    stdout_fd: Optional[int] = None,
    stderr_fd: Optional[int] = None,
    keep_fd: Optional[int] = None,
    new_session: bool = False,
    restore_signals: bool = True,
) -> None:
    """The worker's own setup, shared by static workers (in the launcher's forked child) and
    elastic ones (in this shim): then exec the command in place. Returns only by raising.

    Kept to syscalls, in this order: own session (static: the worker's PID is its group, so
    teardown signals the group); death signal, then a check that ``parent`` did not die
    before it was armed; cores; stdout/stderr; with ``keep_fd`` set, every descriptor but
    0-2 and ``keep_fd`` (close-on-exec) closed, as torchrun's ``close_fds=True`` (an MPI
    process manager's pipes are not the worker's); default SIGPIPE/SIGXFSZ (unless the
    caller already reset them); exec.
    """
    if new_session:
        os.setsid()
    arm_death_signal()
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the death signal was armed: nobody wants us
    if cpus:
        os.sched_setaffinity(0, cpus)
    if stdout_fd is not None:
        os.dup2(stdout_fd, 1)
    if stderr_fd is not None:
        os.dup2(stderr_fd, 2)
    if keep_fd is not None:
        if keep_fd > 3:
            os.closerange(3, keep_fd)
        os.closerange(max(3, keep_fd + 1), MAX_FD)
    if restore_signals:
        for sig in RESTORED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
    os.execve(argv[0], list(argv), env)


def _fail(message: str, code: int) -> None:
    os.write(2, f"hpclaunch: elastic worker: {message}\n".encode(errors="replace"))
    os._exit(code)


def _arm_with_ctypes() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        _fail(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}", 1)


def main(argv: List[str]) -> None:
    import json

    if len(argv) < 3 or argv[1] != "--":
        _fail("usage: worker.py CONFIG -- command [args...]", 2)
    config = json.loads(argv[0])
    command = argv[2:]
    env: Dict[str, str] = dict(os.environ)
    for name, source in DERIVED.items():
        if source in env:
            env[name] = env[source]
    local_rank = int(env.get("LOCAL_RANK", "0"))
    ranks = config["ranks"]
    mine = ranks[local_rank] if local_rank < len(ranks) else {}
    env.update(mine.get("env", {}))
    if mine.get("mem_node") is not None:  # --numa_binding: hpclaunch/spawner/binding.py
        import runpy

        runpy.run_path(config["binding"])["prefer_memory_node"](mine["mem_node"])
    log_fd: Optional[int] = None
    log_dir = config.get("log_dir")
    if log_dir:
        # The same name as plan.log_file_name (static mode); this file imports nothing of
        # hpclaunch, so the formula is repeated here and a test holds the two together.
        # Appended to: a restarted worker adds to its log.
        rank = env.get("RANK", "unknown")
        path = os.path.join(log_dir, f"{config['log_timestamp']}_rank{rank}.log")
        try:
            log_fd = os.open(path, _LOG_FLAGS, 0o644)
        except OSError as exc:
            _fail(f"cannot open log file {path} ({exc.strerror})", 1)
    try:
        become_worker(
            command,
            env,
            config["agent"],
            _arm_with_ctypes,
            cpus=mine.get("cpus") or None,
            stdout_fd=log_fd,
            stderr_fd=log_fd,
        )
    except OSError as exc:
        _fail(f"cannot start {command[0]!r}: {exc}", 127)


if __name__ == "__main__":
    main(sys.argv[1:])
