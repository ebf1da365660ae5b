"""A worker that holds memory (no torch): rank ``--hog-rank`` touches ``--mib`` MiB, or keeps
taking more until the kernel stops it (``--mib 0``); every rank then reports
``worker <rank> <pid>`` on the ``--ready`` FIFO and waits for a signal, or exits 0 with
``--exit``. Memory is written, not just reserved, so it counts in the resident set."""

from __future__ import annotations

import argparse
import os
import signal


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--ready")
    parser.add_argument("--hog-rank", type=int, default=-1)
    parser.add_argument("--mib", type=int, default=0)
    parser.add_argument("--exit", action="store_true")
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    held = []
    if rank == args.hog_rank:
        chunk = 8 << 20
        while args.mib == 0 or len(held) * 8 < args.mib:
            held.append(b"\x01" * chunk)  # written: every page is resident
    if args.ready:
        fd = os.open(args.ready, os.O_WRONLY)
        os.write(fd, f"worker {rank} {os.getpid()}\n".encode())
        os.close(fd)
    if not args.exit:
        while True:
            signal.pause()


if __name__ == "__main__":
    main()
