"""Many real launches from one interpreter: each is a fork that runs the launcher's ``main``.

``python launch_many.py PARALLEL`` reads a JSON list of argument lists on stdin and prints a
JSON list of ``{"status": exit status, "stderr": text}`` in the same order. Each launch is its
own process, forked after hpclaunch is imported, that ends exactly as ``python -m hpclaunch``
does (``raise SystemExit(main())``: exit handlers, flushes, then the status), so every exit
status is a real launcher exit; only Python's start-up and imports are paid once instead of
once per launch (most of a launch's cost on 2 cores). Standard output of launches is dropped.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, List

# The modules a plain launch imports, imported once before forking.
import hpclaunch.adapters.local  # noqa: F401
import hpclaunch.adapters.mpi  # noqa: F401
import hpclaunch.adapters.slurm  # noqa: F401
import hpclaunch.spawner.loop  # noqa: F401
import hpclaunch.spawner.supervisor  # noqa: F401
from hpclaunch import cli


def start(argv: List[str], stderr_path: str) -> int:
    pid = os.fork()
    if pid:
        return pid
    status = 70
    try:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        try:
            status = cli.main(argv)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def main() -> None:
    parallel = int(sys.argv[1])
    launches: List[List[str]] = json.load(sys.stdin)
    results: List[Dict[str, object]] = [{} for _ in launches]
    # mkdtemp, not TemporaryDirectory: its exit hook would run in every launch's exit too.
    scratch = tempfile.mkdtemp(prefix="launch-many-")
    try:
        running: Dict[int, int] = {}
        pending = list(enumerate(launches))
        while pending or running:
            while pending and len(running) < parallel:
                index, argv = pending.pop(0)
                running[start(argv, os.path.join(scratch, f"{index}.err"))] = index
            pid, wait_status = os.wait()
            index = running.pop(pid)
            with open(os.path.join(scratch, f"{index}.err")) as handle:
                stderr = handle.read()
            results[index] = {"status": os.waitstatus_to_exitcode(wait_status), "stderr": stderr}
    finally:
        shutil.rmtree(scratch)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
