"""A configurable test worker (no torch): reports itself on a FIFO, then behaves as told.

Every line written to ``--ready`` is one ``os.write`` (atomic on a FIFO below PIPE_BUF), so
the test can synchronise on it instead of sleeping.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def announce(fifo: str | None, line: str) -> None:
    if fifo:
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, (line + "\n").encode())
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--ready")
    parser.add_argument("--env-out")
    parser.add_argument("--exit-rank", type=int, default=-1)
    parser.add_argument("--code", type=int, default=0)
    parser.add_argument("--kill-self-rank", type=int, default=-1)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--daemon", action="store_true", help="leave a double-forked daemon")
    parser.add_argument("--child", action="store_true", help="leave a plain child process")
    parser.add_argument("--record-signals", action="store_true")
    parser.add_argument(
        "--wait-go",
        action="store_true",
        help="the --exit-rank/--kill-self-rank worker acts on SIGUSR1 only",
    )
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--children", type=int, default=0, help="fork this many sleepers")
    parser.add_argument("--print", dest="text")
    args, rest = parser.parse_known_args()
    rank = int(os.environ["RANK"])

    if args.env_out:
        record = {"argv": sys.argv, "env": dict(os.environ), "pid": os.getpid()}
        path = os.path.join(args.env_out, f"rank{rank}.json")
        with open(path + ".tmp", "w") as handle:
            json.dump(record, handle)
        os.replace(path + ".tmp", path)
    if args.text:
        # One write per line (print() writes the text and the newline separately when
        # unbuffered): with --no_prefix ranks share the console and could split a line.
        sys.stdout.write(f"{args.text} from rank {rank}\n")
        sys.stdout.flush()
        sys.stderr.write(f"stderr line from rank {rank}\n")
        sys.stderr.flush()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.record_signals:

        def record(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            announce(args.ready, f"signal {rank} {name}")
            if signum == signal.SIGUSR2:
                sys.exit(0)  # USR2 ends the worker cleanly: the test knows both arrived

        signal.signal(signal.SIGUSR1, record)
        signal.signal(signal.SIGUSR2, record)
    if args.daemon and os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            if args.ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            announce(args.ready, f"daemon {rank} {os.getpid()}")
            while True:
                signal.pause()
        os._exit(0)
    if args.child and os.fork() == 0:
        announce(args.ready, f"child {rank} {os.getpid()}")
        while True:
            signal.pause()
    for _ in range(args.children):
        if os.fork() == 0:
            while True:
                signal.pause()
    acting = rank in (args.exit_rank, args.kill_self_rank)
    if acting and args.wait_go:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    announce(args.ready, f"worker {rank} {os.getpid()}")
    if acting and args.wait_go:
        signal.sigwait([signal.SIGUSR1])  # the test says "go" once every process is counted
    if rank == args.kill_self_rank:
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == args.exit_rank:
        sys.exit(args.code)
    if args.hang or args.record_signals:
        while True:
            signal.pause()


if __name__ == "__main__":
    main()
