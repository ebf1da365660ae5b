"""A worker that reports the binding it runs under, as seen after exec (no hpclaunch import).

It asks the kernel itself: ``sched_getaffinity`` for the CPUs, the ``get_mempolicy`` syscall
for the memory policy (mode and node mask), and ``/proc/self/numa_maps``, whose policy
column shows the task policy (``prefer:0``, ``bind:0``, ``default``) independently of both.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

SYS_GET_MEMPOLICY = {"x86_64": 239, "aarch64": 236, "riscv64": 236, "ppc64le": 260,
                     "s390x": 269}


def mempolicy() -> dict:
    libc = ctypes.CDLL(None, use_errno=True)
    mode = ctypes.c_int(-1)
    words = 16  # 1024 nodes: the kernel wants at least its own node count
    mask = (ctypes.c_ulong * words)()
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    number = SYS_GET_MEMPOLICY[os.uname().machine]
    if libc.syscall(ctypes.c_long(number), ctypes.byref(mode), mask,
                    ctypes.c_ulong(words * bits), None, ctypes.c_ulong(0)) != 0:
        return {"error": os.strerror(ctypes.get_errno())}
    nodes = [w * bits + b for w in range(words) for b in range(bits) if mask[w] >> b & 1]
    return {"mode": mode.value, "nodes": nodes}


def numa_maps_policies() -> list:
    with open("/proc/self/numa_maps") as handle:
        return sorted({line.split()[1] for line in handle if len(line.split()) > 1})


def main() -> None:
    out = sys.argv[sys.argv.index("--out") + 1]
    rank = os.environ["RANK"]
    record = {"cpus": sorted(os.sched_getaffinity(0)), "mempolicy": mempolicy(),
              "numa_maps": numa_maps_policies(), "omp": os.environ.get("OMP_NUM_THREADS"),
              "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
    with open(os.path.join(out, f"rank{rank}.json.tmp"), "w") as handle:
        json.dump(record, handle)
    os.rename(os.path.join(out, f"rank{rank}.json.tmp"), os.path.join(out, f"rank{rank}.json"))


if __name__ == "__main__":
    main()
