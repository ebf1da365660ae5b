"""Test worker for MPI runs (no torch): announce, then hang, or fail when the test says go.

Every worker writes ``worker <rank> <pid> <launcher pid>`` to the ``--ready`` FIFO in one
``os.write``. The worker whose RANK is ``--fail-rank`` then blocks reading the ``--go``
FIFO and exits with ``--code`` once the test writes to it: the failure happens while every
other worker is known to be running, without a sleep anywhere.
"""

from __future__ import annotations

import argparse
import os
import signal


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--code", type=int, default=3)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    fd = os.open(args.ready, os.O_WRONLY)
    os.write(fd, f"worker {rank} {os.getpid()} {os.getppid()}\n".encode())
    os.close(fd)
    if rank == args.fail_rank and args.go:
        with open(args.go, "rb") as go:
            go.read(1)
        raise SystemExit(args.code)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
