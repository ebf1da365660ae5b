"""An elastic test job (real torch gloo): optionally fail, all_reduce, report, optionally train on.

Each attempt writes ``attempt<RESTART>_rank<RANK>.json`` into ``--out`` (env, argv, the
all_reduce result) and reports ``ready <rank> <pid> <world_size> <restart> <agent pid>`` on
the ``--ready`` FIFO, one ``os.write`` per line, so the test synchronises on it.

``--train`` then keeps the workers in a training loop of small all_reduces until a byte
arrives on the ``--stop`` FIFO (any rank may read it; a MAX all_reduce tells the others). A
peer that dies makes the next all_reduce raise here, which is how a node leaving reaches the
surviving node's agent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def announce(fifo: str | None, line: str) -> None:
    if fifo:
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, (line + "\n").encode())
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-code", type=int, default=3)
    parser.add_argument("--fail-always", action="store_true")
    parser.add_argument("--fail-signal", type=int, default=0, help="die of this signal")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--stop")
    parser.add_argument("--daemon", action="store_true", help="leave a setsid'd grandchild")
    parser.add_argument("--echo", default="")
    parser.add_argument("--on-usr1", action="store_true", help="report SIGUSR1, keep going")
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "-1"))
    if rank == args.fail_rank and (restart == 0 or args.fail_always):
        print(f"rank {rank} fails on purpose (attempt {restart})", file=sys.stderr, flush=True)
        if args.fail_signal:
            os.kill(os.getpid(), args.fail_signal)
        sys.exit(args.fail_code)

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    record = {
        "rank": rank,
        "world_size": world,
        "sum": tensor.item(),
        "restart": restart,
        "argv": sys.argv,
        "local_rank_arg": args.local_rank,
        "env": dict(os.environ),
        "pid": os.getpid(),
        "affinity": sorted(os.sched_getaffinity(0)),
    }
    path = os.path.join(args.out, f"attempt{restart}_rank{rank}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".tmp", path)
    print(f"rank {rank} sum={tensor.item():g} world={world} attempt={restart}", flush=True)
    if args.on_usr1:
        signal.signal(
            signal.SIGUSR1, lambda *_: announce(args.ready, f"usr1 {rank} {os.getpid()}")
        )
    if args.daemon and os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            announce(args.ready, f"daemon {rank} {os.getpid()}")
            while True:
                signal.pause()
        os._exit(0)
    announce(args.ready, f"ready {rank} {os.getpid()} {world} {restart} {os.getppid()}")
    if args.train:
        stop_fd = os.open(args.stop, os.O_RDONLY | os.O_NONBLOCK) if args.stop else -1
        while True:
            flag = torch.tensor([0.0])
            if stop_fd >= 0:
                try:
                    if os.read(stop_fd, 1):
                        flag[0] = 1.0
                except BlockingIOError:
                    pass
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # raises when a peer is gone
            if flag.item() > 0:
                break
            time.sleep(0.05)  # a training step's pace, not synchronisation
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
