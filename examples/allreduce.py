"""A real torch.distributed all_reduce: each rank contributes rank+1; all must see the sum.

Works under hpclaunch (or torchrun, or DeepSpeed's launcher): reads RANK/WORLD_SIZE/
MASTER_ADDR/MASTER_PORT from the environment and accepts DeepSpeed's ``--local_rank=N``.
Uses NCCL on GPUs and gloo otherwise. ``--out DIR`` makes each rank write what it saw to
``DIR/rank<R>.json`` (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import socket

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    parser.add_argument("--out", default=None)
    parser.add_argument("--backend", default=None)
    args, extra = parser.parse_known_args()

    use_cuda = torch.cuda.is_available() and args.backend != "gloo"
    backend = args.backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(args.local_rank)
    dist.init_process_group(backend=backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", args.local_rank) if use_cuda else torch.device("cpu")
    value = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(value)
    expected = world_size * (world_size + 1) / 2
    ok = value.item() == expected
    if rank == 0:
        print(
            f"all_reduce over {world_size} ranks ({backend}): sum={value.item():g} "
            f"expected={expected:g} {'OK' if ok else 'WRONG'}",
            flush=True,
        )
    if args.out:
        record = {
            "rank": rank,
            "world_size": world_size,
            "local_rank_arg": args.local_rank,
            "sum": value.item(),
            "expected": expected,
            "host": socket.gethostname(),
            "argv_extra": extra,
            "env": {k: v for k, v in os.environ.items() if k.isupper()},
        }
        path = os.path.join(args.out, f"rank{rank}.json")
        with open(path + ".tmp", "w") as handle:
            json.dump(record, handle)
        os.replace(path + ".tmp", path)
    dist.destroy_process_group()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
