"""A torch-free worker for the tests of a failure ending a Slurm step on every node.

Every line goes to the ``--ready`` FIFO in one ``os.write`` (atomic, so lines never mix):

* ``worker <rank> <pid> <parent pid> <job>.<step> <attempt>`` once it runs (the parent is
  the launcher in static mode, torch's agent in elastic mode);
* ``usr1 <rank> <pid>`` for each SIGUSR1 (proof that it was still alive, and its launcher
  still forwarding, when the test signalled the step).

``--fail-rank R`` fails with ``--code``: once a byte arrives on the ``--go`` FIFO when one
is given (so the failure happens while every other worker is known to run), at once
otherwise; with ``--once`` only in the first elastic attempt. ``--finish-ranks R,R`` exit 0
right after announcing. Everyone else waits until a signal ends it (SIGTERM's default).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def announce(fifo: str, line: str) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--code", type=int, default=3)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--finish-ranks", default="")
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    step = f"{os.environ.get('SLURM_JOB_ID')}.{os.environ.get('SLURM_STEP_ID')}"
    signal.signal(signal.SIGUSR1, lambda *_: announce(args.ready, f"usr1 {rank} {os.getpid()}"))
    announce(args.ready, f"worker {rank} {os.getpid()} {os.getppid()} {step} {attempt}")
    if rank == args.fail_rank and (attempt == 0 or not args.once):
        if args.go:
            with open(args.go, "rb") as go:
                go.read(1)
        print(f"rank {rank} fails on purpose with code {args.code}", file=sys.stderr, flush=True)
        sys.exit(args.code)
    if str(rank) in args.finish_ranks.split(","):
        sys.exit(0)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
