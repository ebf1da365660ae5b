"""What every worker runs between fork and exec, static or elastic: standard library only.

Static workers run :func:`become_worker` in the launcher's forked child; elastic workers run
it in :mod:`hpclaunch.spawner.elastic.worker`, the shim torch's agent starts, which loads
this file by path (``python -I -S``: no site-packages, no hpclaunch package import). So the
two setups cannot drift apart, and this module imports nothing but the standard library.

Also here, because both the launcher and those children use them: the ``prctl`` options,
the one libc loader, the signals to restore, the descriptor ceiling, and the NUMA memory
policy call.

Memory policy: ``MPOL_PREFERRED`` on the GPU's node, not ``MPOL_BIND``. Preferred puts every
page on the near node while it has room and falls back to the others when it is full; bind
would turn a full node into an OOM kill of the rank. There is no glibc wrapper for
``set_mempolicy`` (it is libnuma's), so it is called through ``syscall(2)`` by number.
"""

from __future__ import annotations

import _signal
import fcntl
import os
import signal
from functools import cache

#: typing only for the type checker: elastic workers load this file in a bare ``python -I
#: -S`` at every start of every round, where importing typing (re, enum, collections)
#: would be most of the shim's own cost.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping, Optional, Sequence

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Yama's "this process (and its descendants) may ptrace me": py-spy, started by the launcher.
PR_SET_PTRACER = 0x59616D61

#: Upper bound for closing inherited descriptors (``closerange`` uses close_range(2)).
MAX_FD = 1 << 30

#: Python ignores these at start-up and an ignored disposition survives exec: without a
#: reset a worker (or a shell pipeline inside it) would never die of a broken pipe.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
_RESTORED_NUMBERS = tuple(int(sig) for sig in RESTORED_SIGNALS)

#: set_mempolicy(2) by machine: x86_64 and the generic table (aarch64, riscv64, loongarch64)
SYS_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "arm64": 237, "riscv64": 237,
                     "loongarch64": 237, "ppc64le": 261, "ppc64": 261, "s390x": 270}
#: get_mempolicy(2), used once in the launcher to learn whether memory policy calls are allowed
SYS_GET_MEMPOLICY = {"x86_64": 239, "aarch64": 236, "arm64": 236, "riscv64": 236,
                     "loongarch64": 236, "ppc64le": 260, "ppc64": 260, "s390x": 269}
MPOL_PREFERRED = 1


@cache
def libc() -> Any:
    """libc through ctypes, loaded once. The launcher loads it before it forks: a child
    between fork and exec must not run the dynamic loader."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    lib = libc()
    if lib.prctl(option, value, 0, 0, 0) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def arm_death_signal() -> None:
    """Die by SIGKILL when the forking thread's process dies. A plain 9, not
    ``signal.SIGKILL``: no enum work between fork and exec."""
    prctl(PR_SET_PDEATHSIG, 9)


def become_worker(
    argv: Sequence[str],
    env: Mapping[str, str],
    parent: int,
    cpus: Optional[Sequence[int]] = None,
    mem_node: Optional[int] = None,
    stdout_fd: Optional[int] = None,
    stderr_fd: Optional[int] = None,
    keep_fd: Optional[int] = None,
    new_session: bool = False,
    tracer: Optional[int] = None,
) -> None:
    """The worker's own setup, then exec the command in place. Returns only by raising.

    Kept to syscalls, in this order: own session (static: the worker's PID is its group, so
    teardown signals the group); death signal, then a check that ``parent`` did not die
    before it was armed; ``tracer`` (the launcher) allowed to ptrace it, so py-spy can take
    native stacks under Yama's ptrace scope 1 without root; cores and memory node;
    stdout/stderr, and fds 0-2 open (see :func:`keep_standard_fds_open`); with ``keep_fd``
    set, every descriptor but 0-2 and ``keep_fd`` (close-on-exec) closed, as torchrun's
    ``close_fds=True`` (an MPI process manager's pipes are not the worker's); default
    SIGPIPE/SIGXFSZ; exec.
    """
    if new_session:
        os.setsid()
    arm_death_signal()
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the death signal was armed: nobody wants us
    if tracer is not None:
        allow_tracer(tracer)
    if cpus:
        os.sched_setaffinity(0, cpus)
    if mem_node is not None:
        prefer_memory_node(mem_node)
    if stdout_fd is not None:
        os.dup2(stdout_fd, 1)
    if stderr_fd is not None:
        os.dup2(stderr_fd, 2)
    keep_standard_fds_open()
    if keep_fd is not None:
        if keep_fd > 3:
            os.closerange(3, keep_fd)
        os.closerange(max(3, keep_fd + 1), MAX_FD)
    for sig in _RESTORED_NUMBERS:
        _signal.signal(sig, 0)  # SIG_DFL, through the C module: no enum work before exec
    os.execve(argv[0], list(argv), env)


def keep_standard_fds_open() -> None:
    """Give the program fds 0, 1 and 2, on /dev/null where the launcher had none to give.

    A descriptor that is closed, or open but close-on-exec (a pipe of the launcher's that
    landed on a free 0-2 number), would be a hole after exec: the program's first ``open``
    would become its stdin, stdout or stderr, and its prints would go into that file.
    """
    for fd in (0, 1, 2):
        try:
            if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                continue
        except OSError:
            pass  # closed
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        else:
            os.set_inheritable(fd, True)


def missing_interpreter(path: str) -> Optional[str]:
    """The interpreter ``path``'s ``#!`` line names, if that interpreter cannot be run.

    ``execve`` says ENOENT both for a missing program and for a present script whose
    interpreter is missing; only the first line tells which.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    if not words:
        return None
    interpreter = os.fsdecode(words[0])
    if os.path.isfile(interpreter) and os.access(interpreter, os.X_OK):
        return None
    return interpreter


def exec_failure(program: str, exc: BaseException) -> str:
    """Why ``program`` could not be started, naming the right culprit."""
    if isinstance(exc, FileNotFoundError) and os.path.isfile(program):
        interpreter = missing_interpreter(program)
        if interpreter is not None:
            return (f"cannot start {program!r}: the interpreter its #! line names, "
                    f"{interpreter!r}, was not found")
    return f"cannot start {program!r}: {exc}"


def allow_tracer(pid: int) -> None:
    """Let ``pid`` and its descendants ptrace this process (and, after exec, the program).
    Without Yama the kernel refuses the option (EINVAL), and nothing needs allowing."""
    try:
        prctl(PR_SET_PTRACER, pid)
    except OSError:
        pass


def prefer_memory_node(node: int) -> None:
    """This process's (and, after exec, the program's) pages go to ``node`` first."""
    import ctypes

    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    words = node // bits + 2
    mask = (ctypes.c_ulong * words)()
    mask[node // bits] = 1 << (node % bits)
    # The kernel reads maxnode - 1 bits (a long-standing quirk numactl also works around),
    # so passing the array's full width keeps ``node`` inside what it reads.
    number = SYS_SET_MEMPOLICY[os.uname().machine]
    result = libc().syscall(ctypes.c_long(number), ctypes.c_int(MPOL_PREFERRED), mask,
                            ctypes.c_ulong(words * bits))
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"set_mempolicy(MPOL_PREFERRED, node {node}): {os.strerror(err)}")


def memory_binding_unavailable() -> str:
    """Why memory cannot be bound here ("" when it can). Called in the launcher, not a child.

    Containers often refuse the NUMA syscalls (Docker's default seccomp profile allows them
    only with CAP_SYS_NICE): asking once with a harmless ``get_mempolicy`` finds that out
    before any worker starts, so the workers' CPUs are still bound and the job still runs.
    Loads libc, before any fork, as a side effect.
    """
    machine = os.uname().machine
    if machine not in SYS_SET_MEMPOLICY or machine not in SYS_GET_MEMPOLICY:
        return f"set_mempolicy's number on {machine} is not known to hpclaunch"
    import ctypes

    mode = ctypes.c_int(0)
    if libc().syscall(ctypes.c_long(SYS_GET_MEMPOLICY[machine]), ctypes.byref(mode), None,
                      ctypes.c_ulong(0), None, ctypes.c_ulong(0)) != 0:
        return f"get_mempolicy failed: {os.strerror(ctypes.get_errno())}"
    return ""
