"""A job that hangs the way distributed jobs do: rank 1 never joins the all_reduce that the
other ranks wait in. Nothing in it knows about hpclaunch; run it with a stall timeout to see
every rank's stack and where each one stopped:

    hpclaunch --nproc_per_node 2 --stall_timeout 10 examples/stall.py

or press Ctrl-\\ (SIGQUIT) while it hangs to dump the stacks and let it hang on. A loop that
prints nothing could instead tell hpclaunch it is alive by touching its heartbeat file:
``os.utime(os.environ["HPCLAUNCH_HEARTBEAT_FILE"])``.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


def wait_for_data() -> None:
    time.sleep(3600)  # a stuck reader, a lost file system, a rank that never arrives


def main() -> None:
    dist.init_process_group(backend="gloo")
    rank = dist.get_rank()
    print(f"rank {rank}: joined", flush=True)
    if rank == 1:
        wait_for_data()
    total = torch.ones(1)
    dist.all_reduce(total)
    print(f"rank {rank}: sum {total.item():g}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
