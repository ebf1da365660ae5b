"""Workers that hang in the ways a distributed job does, for the stall and stack-dump tests.

Each mode prints one line first (so the rank counts as having made progress), then hangs
where a comment ``# HANG: <name>`` marks the line: the tests look the line numbers up in
this file and expect them in the dumped stacks.

* ``allreduce`` (torch, gloo): every rank joins the process group; rank 1 then sleeps
  forever instead of joining the all_reduce that rank 0 waits in;
* ``deadlock``: two threads each hold one lock and wait for the other's;
* ``select`` / ``pause``: the main thread blocked inside a C call;
* ``spin``: rank 0 computes forever without a word, the others sleep;
* ``heartbeat``: touches ``$HPCLAUNCH_HEARTBEAT_FILE`` every 0.2 s for ``--touch-seconds``
  and says nothing more; exits 0 after ``--seconds`` (``--silent``: not even the first line);
* ``gate``: report on ``--ready`` (a FIFO), wait until ``--go`` (a FIFO) is opened, exit 0;
* ``node0-stalls``: the ranks of node 0 go quiet, the other nodes' ranks print on.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
import time


def announce(fifo: str, line: str) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, (line + "\n").encode())
    os.close(fd)


def allreduce(rank: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    print(f"rank {rank} joined the group", flush=True)
    if rank == 1:
        time.sleep(1e9)  # HANG: sleep
    dist.all_reduce(torch.ones(1))  # HANG: allreduce


def deadlock() -> None:
    first, second = threading.Lock(), threading.Lock()
    both_hold = threading.Barrier(2)

    def take(held: threading.Lock, wanted: threading.Lock) -> None:
        with held:
            both_hold.wait()
            with wanted:  # HANG: deadlock
                pass

    threads = [
        threading.Thread(target=take, args=(first, second), name="takes-first"),
        threading.Thread(target=take, args=(second, first), name="takes-second"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # HANG: join


def blocked_in_select() -> None:
    read_end, _ = os.pipe()
    select.select([read_end], [], [])  # HANG: select


def paused() -> None:
    signal.pause()  # HANG: pause


def spin(rank: int) -> None:
    if rank != 0:
        time.sleep(1e9)  # HANG: idle
    total = 0
    while True:
        total += 1  # HANG: spin


def heartbeat(seconds: float, touch_seconds: float) -> None:
    path = os.environ["HPCLAUNCH_HEARTBEAT_FILE"]
    start = time.monotonic()
    while time.monotonic() < start + seconds:
        if time.monotonic() < start + touch_seconds:
            os.utime(path)
        time.sleep(0.2)  # HANG: heartbeat


def node0_stalls() -> None:
    if os.environ["CROSS_RANK"] == "0":
        time.sleep(1e9)  # HANG: stalled node
    while True:
        print("still here", flush=True)
        time.sleep(0.2)  # HANG: busy node


def gate(rank: int, ready: str, go: str) -> None:
    announce(ready, f"ready {rank} {os.getpid()}")
    os.close(os.open(go, os.O_RDONLY))  # HANG: gate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--touch-seconds", type=float, default=None)
    parser.add_argument("--silent", action="store_true")
    parser.add_argument("--ready")
    parser.add_argument("--go")
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    if args.mode == "allreduce":
        allreduce(rank)
        return
    if not args.silent:
        print(f"rank {rank} started ({args.mode})", flush=True)
    if args.mode == "deadlock":
        deadlock()
    elif args.mode == "select":
        blocked_in_select()
    elif args.mode == "pause":
        paused()
    elif args.mode == "spin":
        spin(rank)
    elif args.mode == "heartbeat":
        touch = args.seconds if args.touch_seconds is None else args.touch_seconds
        heartbeat(args.seconds, touch)
    elif args.mode == "node0-stalls":
        node0_stalls()
    elif args.mode == "gate":
        gate(rank, args.ready, args.go)
    else:
        sys.exit(f"unknown mode {args.mode}")


if __name__ == "__main__":
    main()
