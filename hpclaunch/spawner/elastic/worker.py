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

It is run as ``python -I -S elastic_worker.py CONFIG -- argv...``: standard library only, no
site-packages, no hpclaunch import, so it costs a few milliseconds per worker start.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Dict, List

PR_SET_PDEATHSIG = 1

#: Variables hpclaunch derives from the agent's: contract name -> torch name.
DERIVED = {"CROSS_RANK": "GROUP_RANK", "CROSS_SIZE": "GROUP_WORLD_SIZE",
           "LOCAL_SIZE": "LOCAL_WORLD_SIZE"}

_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def _fail(message: str, code: int) -> None:
    os.write(2, f"hpclaunch: elastic worker: {message}\n".encode(errors="replace"))
    os._exit(code)


def main(argv: List[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        _fail("usage: elastic_worker.py CONFIG -- command [args...]", 2)
    config = json.loads(argv[0])
    command = argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        _fail(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}", 1)
    if os.getppid() != config["agent"]:
        os._exit(1)  # the agent died before pdeathsig was armed: nobody wants this worker
    env: Dict[str, str] = dict(os.environ)
    for name, source in DERIVED.items():
        if source in env:
            env[name] = env[source]
    local_rank = int(env.get("LOCAL_RANK", "0"))
    ranks = config["ranks"]
    mine = ranks[local_rank] if local_rank < len(ranks) else {}
    env.update(mine.get("env", {}))
    if mine.get("cpus"):
        os.sched_setaffinity(0, mine["cpus"])
    if mine.get("mem_node") is not None:  # --numa_binding: hpclaunch/spawner/binding.py
        import runpy

        runpy.run_path(config["binding"])["prefer_memory_node"](mine["mem_node"])
    log_dir = config.get("log_dir")
    if log_dir:
        # The same name as plan.log_file_name (static mode); this file imports nothing of
        # hpclaunch, so the formula is repeated here and a test holds the two together.
        rank = env.get("RANK", "unknown")
        path = os.path.join(log_dir, f"{config['log_timestamp']}_rank{rank}.log")
        try:
            fd = os.open(path, _LOG_FLAGS, 0o644)
        except OSError as exc:
            _fail(f"cannot open log file {path} ({exc.strerror})", 1)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    # Python ignores SIGPIPE and SIGXFSZ at start-up and exec keeps an ignored signal
    # ignored: give the worker the defaults it would get from any other launcher.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        _fail(f"cannot start {command[0]!r}: {exc}", 127)


if __name__ == "__main__":
    main(sys.argv[1:])
