"""The worker's side of CPU and memory binding: called in the forked child, before exec.

CPU affinity (``sched_setaffinity``) and the memory policy (``set_mempolicy``) are both
kept across ``execve``, so setting them between fork and exec binds the worker from its
first instruction, with no numactl and nothing for the training script to do.

Memory policy: ``MPOL_PREFERRED`` on the GPU's node, not ``MPOL_BIND``. Preferred puts every
page on the near node while it has room and falls back to the others when it is full;
bind would turn a full node (page cache, a large pinned-memory pool, four ranks sharing one
node of a two-socket machine) into an OOM kill of the rank, trading a few percent of
bandwidth for a crash. numactl users who want the strict form can still wrap the script.

There is no glibc wrapper for ``set_mempolicy`` (it is libnuma's), so it is called through
``syscall(2)`` by number. libc is loaded by :func:`load_libc` in the launcher *before* it
forks: a child between fork and exec must not run the dynamic loader. This module uses the
standard library only, so the elastic worker shim (run with ``python -I -S``) can load it
by path.
"""

from __future__ import annotations

import os
from typing import Any, Optional

#: set_mempolicy(2) by machine: x86_64 and the generic table (aarch64, riscv64, loongarch64)
SYS_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "arm64": 237, "riscv64": 237,
                     "loongarch64": 237, "ppc64le": 261, "ppc64": 261, "s390x": 270}
#: get_mempolicy(2), used once in the launcher to learn whether memory policy calls are allowed
SYS_GET_MEMPOLICY = {"x86_64": 239, "aarch64": 236, "arm64": 236, "riscv64": 236,
                     "loongarch64": 236, "ppc64le": 260, "ppc64": 260, "s390x": 269}
MPOL_PREFERRED = 1

_libc: Optional[Any] = None


def memory_binding_unavailable() -> str:
    """Why memory cannot be bound here ("" when it can). Called in the launcher, not a child.

    Containers often refuse the NUMA syscalls (Docker's default seccomp profile allows them
    only with CAP_SYS_NICE): asking once with a harmless ``get_mempolicy`` finds that out
    before any worker starts, so the workers' CPUs are still bound and the job still runs.
    """
    machine = os.uname().machine
    if machine not in SYS_SET_MEMPOLICY or machine not in SYS_GET_MEMPOLICY:
        return f"set_mempolicy's number on {machine} is not known to hpclaunch"
    import ctypes

    load_libc()
    assert _libc is not None
    mode = ctypes.c_int(0)
    if _libc.syscall(ctypes.c_long(SYS_GET_MEMPOLICY[machine]), ctypes.byref(mode), None,
                     ctypes.c_ulong(0), None, ctypes.c_ulong(0)) != 0:
        return f"get_mempolicy failed: {os.strerror(ctypes.get_errno())}"
    return ""


def load_libc() -> None:
    """Load libc for :func:`prefer_memory_node`; call before forking (only when memory is
    bound: :func:`memory_binding_unavailable`, asked in the launcher, does)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)


def prefer_memory_node(node: int) -> None:
    """This process's (and, after exec, the program's) pages go to ``node`` first."""
    import ctypes

    load_libc()
    assert _libc is not None
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    words = node // bits + 2
    mask = (ctypes.c_ulong * words)()
    mask[node // bits] = 1 << (node % bits)
    # The kernel reads maxnode - 1 bits (a long-standing quirk numactl also works around),
    # so passing the array's full width keeps ``node`` inside what it reads.
    number = SYS_SET_MEMPOLICY[os.uname().machine]
    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(MPOL_PREFERRED), mask,
                           ctypes.c_ulong(words * bits))
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"set_mempolicy(MPOL_PREFERRED, node {node}): {os.strerror(err)}")

