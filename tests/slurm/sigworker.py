"""A torch-free worker for the Slurm signal tests; every fact it reports is a file.

``DIR/ready.<RANK>`` holds its PID (and its setsid'd grandchild's, with ``--grandchild``),
written by atomic rename once its handlers are in place, so the test can send signals only
then. SIGUSR1 adds a line to ``DIR/usr1.<RANK>``; ``--exit-on-usr1`` then exits 0.
``--ignore-term`` makes it outlive SIGTERM, so only the launcher's SIGKILL ends it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--exit-on-usr1", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild", action="store_true")
    args = parser.parse_args()
    rank = os.environ["RANK"]
    got_usr1 = []

    def on_usr1(signum: int, frame: object) -> None:
        with open(os.path.join(args.dir, f"usr1.{rank}"), "a") as handle:
            handle.write(f"{os.getpid()}\n")
        got_usr1.append(signum)

    signal.signal(signal.SIGUSR1, on_usr1)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    if args.grandchild:
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # a setsid'd descendant the launcher must find and end itself
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            while True:
                signal.pause()
        os.close(write_end)
        pids.append(int(os.read(read_end, 32)))
    write_atomically(os.path.join(args.dir, f"ready.{rank}"), " ".join(map(str, pids)))
    while True:
        signal.pause()
        if got_usr1 and args.exit_on_usr1:
            sys.exit(0)


if __name__ == "__main__":
    main()
