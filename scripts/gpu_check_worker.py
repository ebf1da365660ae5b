"""scripts/gpu-check.sh's worker: a NCCL all_reduce, and what this rank's device and binding are.

Each rank writes ``OUT/rank<R>.json``: its LOCAL_RANK and CUDA_VISIBLE_DEVICES, the UUID and
PCI bus id of the device torch gives it (``cuda:LOCAL_RANK``), the all_reduce result, and the
CPUs and memory policy the kernel reports after exec. gpu-check.sh compares these with
nvidia-smi and sysfs, which are independent of hpclaunch.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
from typing import Dict

import torch
import torch.distributed as dist

SYS_GET_MEMPOLICY = {"x86_64": 239, "aarch64": 236, "ppc64le": 260}


def mempolicy() -> Dict[str, object]:
    number = SYS_GET_MEMPOLICY.get(os.uname().machine)
    if number is None:
        return {"error": "unknown machine"}
    libc = ctypes.CDLL(None, use_errno=True)
    mode = ctypes.c_int(-1)
    words, bits = 16, 8 * ctypes.sizeof(ctypes.c_ulong)
    mask = (ctypes.c_ulong * words)()
    if libc.syscall(ctypes.c_long(number), ctypes.byref(mode), mask,
                    ctypes.c_ulong(words * bits), None, ctypes.c_ulong(0)) != 0:
        return {"error": os.strerror(ctypes.get_errno())}
    return {"mode": mode.value,
            "nodes": [w * bits + b for w in range(words) for b in range(bits) if mask[w] >> b & 1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.cuda.set_device(args.local_rank)
    dist.init_process_group(backend="nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)], device="cuda")
    dist.all_reduce(value)
    torch.cuda.synchronize()
    props = torch.cuda.get_device_properties(args.local_rank)
    pci = "{:08x}:{:02x}:{:02x}.0".format(
        getattr(props, "pci_domain_id", 0), getattr(props, "pci_bus_id", -1),
        getattr(props, "pci_device_id", -1))
    record = {
        "rank": rank, "world_size": world, "local_rank": args.local_rank,
        "env_local_rank": os.environ.get("LOCAL_RANK"),
        "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "uuid": str(getattr(props, "uuid", "")), "pci": pci, "name": props.name,
        "sum": value.item(), "expected": world * (world + 1) / 2,
        "cpus": sorted(os.sched_getaffinity(0)), "mempolicy": mempolicy(),
    }
    path = os.path.join(args.out, f"rank{rank}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".tmp", path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
