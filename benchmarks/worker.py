"""Benchmark worker (no torch): announces its PIDs on a FIFO, then behaves as told.

Kept separate from ``tests/bin/worker.py`` because the benchmark needs one thing the test
worker does not do: the failing rank writes the CLOCK_MONOTONIC time of its own death, so
failure-detection latency is measured from the event itself and not from when the benchmark
happened to notice it. CLOCK_MONOTONIC is one clock for every process on the machine.

Lines on ``--ready`` (each one ``os.write``, atomic below PIPE_BUF, so lines never interleave):
``worker <rank> <pid>``, ``child <rank> <pid>``, ``daemon <rank> <pid>``,
``dead <rank> <monotonic_ns>``, ``term <rank> <monotonic_ns>`` (when SIGTERM arrived).
Works under hpclaunch, torchrun and DeepSpeed's launcher:
the rank comes from ``RANK`` and DeepSpeed's ``--local_rank=N`` is accepted and ignored.
"""

from __future__ import annotations

import argparse
import os
import signal
import time


def announce(fifo: str, line: str) -> None:
    """One write per line: a FIFO write below PIPE_BUF is atomic, so lines never interleave."""
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def pause_forever() -> None:
    """Sleep until killed; ``signal.pause`` returns after each handled signal, so loop."""
    while True:
        signal.pause()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--local_rank", type=int, help="DeepSpeed/hpclaunch pass it; unused")
    parser.add_argument("--ready", required=True, help="FIFO to announce PIDs and events on")
    parser.add_argument("--ignore-term", action="store_true", help="SIG_IGN SIGTERM")
    parser.add_argument("--child", action="store_true", help="leave a plain child (same group)")
    parser.add_argument("--daemon", action="store_true", help="leave a double-forked setsid daemon")
    parser.add_argument("--fail-rank", type=int, default=-1, help="this rank fails on SIGUSR1")
    parser.add_argument("--code", type=int, default=3, help="exit status of the failing rank")
    parser.add_argument("--report-term", action="store_true",
                        help="on SIGTERM write 'term <rank> <monotonic_ns>' and exit 0")
    args, _ = parser.parse_known_args()
    rank = int(os.environ.get("RANK", "0"))

    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif args.report_term:
        def on_term(signum: int, frame: object) -> None:
            announce(args.ready, f"term {rank} {time.monotonic_ns()}")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
    if args.daemon and os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            announce(args.ready, f"daemon {rank} {os.getpid()}")
            pause_forever()
        os._exit(0)
    if args.child and os.fork() == 0:
        announce(args.ready, f"child {rank} {os.getpid()}")
        pause_forever()
    failing = rank == args.fail_rank
    if failing:
        # Blocked before the announcement: a "go" sent right after it can never be lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    announce(args.ready, f"worker {rank} {os.getpid()}")
    if failing:
        signal.sigwait([signal.SIGUSR1])
        announce(args.ready, f"dead {rank} {time.monotonic_ns()}")
        os._exit(args.code)  # no interpreter teardown: death follows the timestamp at once
    pause_forever()


if __name__ == "__main__":
    main()
