"""A small DDP training loop that survives Slurm pre-emption: checkpoint on SIGUSR1, resume.

Runs under hpclaunch (``srun hpclaunch examples/slurm/train.py --ckpt DIR``) on CPUs (gloo)
or GPUs (nccl, one per worker: ``cuda:LOCAL_RANK``). Slurm's ``--signal=USR1@90`` sends the
warning to every task; hpclaunch forwards it to every worker. A worker only sets a flag in
the handler: the ranks agree on it with an all_reduce at the next step (so all stop at the
same step, none blocked in a collective), rank 0 saves ``DIR/last.pt`` and writes
``DIR/preempted``, and everyone exits 0; the sbatch script then requeues the job, which
resumes from ``last.pt``. At the end rank 0 writes ``DIR/done`` holding the last step.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

preempt_requested = False


def request_preemption(signum: int, frame: object) -> None:
    global preempt_requested
    preempt_requested = True


def save_atomically(obj: object, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    parser.add_argument("--ckpt", required=True, help="checkpoint directory, shared by nodes")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step-seconds", type=float, default=0.0, help="simulated compute")
    parser.add_argument("--backend", default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGUSR1, request_preemption)

    use_cuda = torch.cuda.is_available() and args.backend != "gloo"
    device = torch.device("cuda", args.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=args.backend or ("nccl" if use_cuda else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    ckpt_dir = Path(args.ckpt)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = ckpt_dir / "last.pt"

    torch.manual_seed(0)
    model = DistributedDataParallel(
        torch.nn.Linear(16, 1).to(device), device_ids=[args.local_rank] if use_cuda else None
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = 0
    if last.exists():
        state = torch.load(last, map_location=device)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        if rank == 0:
            print(f"resumed at step {step}", flush=True)
    if rank == 0:
        (ckpt_dir / f"started.{os.environ.get('SLURM_RESTART_COUNT', '0')}").write_text(str(step))

    flag = torch.zeros(1, device=device)
    while step < args.steps:
        flag.fill_(1.0 if preempt_requested else 0.0)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            break
        generator = torch.Generator().manual_seed(step * world + rank)
        inputs = torch.randn(32, 16, generator=generator).to(device)
        loss = model(inputs).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if args.step_seconds:
            time.sleep(args.step_seconds)

    if rank == 0:
        state = {"model": model.module.state_dict(), "optimizer": optimizer.state_dict()}
        save_atomically({**state, "step": step}, last)
        marker = "preempted" if step < args.steps else "done"
        (ckpt_dir / marker).write_text(str(step))
        print(f"{marker} at step {step} of {args.steps} ({world} ranks)", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
