"""The first program each elastic worker runs: finish the worker's setup, then exec the script.

torch's elastic agent starts workers with a plain ``Popen`` (own session, its own env
variables), which leaves these things of hpclaunch's contract undone. This file does them in
the worker's own process, then ``exec``s the user's command in place (same PID, so the
agent's bookkeeping, signals and exit codes are untouched):

* ``PR_SET_PDEATHSIG=SIGKILL``: the worker dies with the agent, so a SIGKILLed launcher
  (whose agent dies with *it*) leaves no worker behind even before the watchdog acts;
* ``CROSS_RANK``/``CROSS_SIZE``/``LOCAL_SIZE`` from the agent's ``GROUP_RANK``/
  ``GROUP_WORLD_SIZE``/``LOCAL_WORLD_SIZE`` (only known after each rendezvous), plus this
  local rank's fixed variables from the plan (``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``);
* the per-rank log, named by the global rank the rendezvous assigned, opened for appending
  (a restarted worker adds to its log) and never through a symlink;
* the core and memory binding of ``--bind_cores_to_rank``/``--numa_binding``;
* the launcher allowed to ptrace it (``PR_SET_PTRACER``: py-spy's native stacks), and, among
  the local rank's variables, the ones naming its stack-dump pipe and heartbeat file.

The setup itself is :func:`hpclaunch.spawner.child.become_worker`, the function static
workers run in the launcher's forked child. It is run as ``python -I -S worker.py CONFIG --
argv...`` (CONFIG: :func:`hpclaunch.spawner.elastic.agent.shim_argument`): standard library
only, no site-packages, no hpclaunch package import (the child module is loaded by path), so
it costs a few milliseconds per worker start.
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False  # typing only for the type checker: see the cost note in main()
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

#: Variables hpclaunch derives from the agent's: contract name -> torch name.
DERIVED = {"CROSS_RANK": "GROUP_RANK", "CROSS_SIZE": "GROUP_WORLD_SIZE",
           "LOCAL_SIZE": "LOCAL_WORLD_SIZE"}

CHILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "child.py")

_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def _fail(message: str, code: int) -> None:
    os.write(2, f"hpclaunch: elastic worker: {message}\n".encode(errors="replace"))
    os._exit(code)


def hello(name: str, env: Dict[str, str], local_rank: int) -> None:
    """One datagram to the launcher: this process (the kernel adds its PID) is a worker of
    this rank and round. Best effort: the worker starts whether or not anyone listens."""
    import _socket  # the C module: the socket package would import enum, selectors...

    # JSON by hand: three integers, and ``import json`` (re, enum, ...) is what this shim
    # avoids at every start of every round.
    message = b'{"rank": %d, "local_rank": %d, "restart": %d}' % (
        int(env.get("RANK", "-1")),
        local_rank,
        int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
    )
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            sock.settimeout(2.0)
            sock.sendto(message, "\0" + name)
        finally:
            sock.close()
    except (OSError, ValueError):
        pass


def load_child() -> Dict[str, Any]:
    """hpclaunch/spawner/child.py's names, from the file itself (nothing else imported)."""
    namespace: Dict[str, Any] = {"__name__": "hpclaunch_child", "__file__": CHILD}
    with open(CHILD, "rb") as handle:
        exec(compile(handle.read(), CHILD, "exec"), namespace)
    return namespace


def main(argv: List[str]) -> None:
    """Every worker of every round runs this before its own interpreter starts, so what it
    imports is paid at each restart: the config is marshalled, not JSON (json's import, with
    re and enum, and typing's were most of the shim's own time)."""
    if len(argv) < 3 or argv[1] != "--":
        _fail("usage: worker.py CONFIG -- command [args...]", 2)
    config = marshal.loads(bytes.fromhex(argv[0]))
    command = argv[2:]
    env: Dict[str, str] = dict(os.environ)
    for name, source in DERIVED.items():
        if source in env:
            env[name] = env[source]
    local_rank = int(env.get("LOCAL_RANK", "0"))
    ranks = config["ranks"]
    mine = ranks[local_rank] if local_rank < len(ranks) else {}
    env.update(mine.get("env", {}))
    log_fd: Optional[int] = None
    if config.get("log_path"):
        # The plan's per-rank log name around the rank the rendezvous assigned. Appended
        # to: a restarted worker adds to its log.
        head, tail = config["log_path"]
        path = f"{head}{env.get('RANK', 'unknown')}{tail}"
        try:
            log_fd = os.open(path, _LOG_FLAGS, 0o644)
        except OSError as exc:
            _fail(f"cannot open log file {path} ({exc.strerror})", 1)
    if config.get("notify"):
        hello(config["notify"], env, local_rank)
    child = load_child()
    try:
        child["become_worker"](
            command,
            env,
            config["agent"],
            cpus=mine.get("cpus") or None,
            mem_node=mine.get("mem_node"),
            stdout_fd=log_fd,
            stderr_fd=log_fd,
            tracer=config.get("tracer"),
        )
    except OSError as exc:
        _fail(child["exec_failure"](command[0], exc), 127)


if __name__ == "__main__":
    main(sys.argv[1:])
