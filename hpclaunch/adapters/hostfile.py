"""What the PBS and LSF adapters share: a job's host list given one entry per slot, this
host's place in it, and the check that exactly one hpclaunch runs per host.

Both schedulers list a job's hosts the way ``mpirun`` wants them: a host once per slot
(``PBS_NODEFILE``, ``LSB_DJOB_HOSTFILE``) or as ``host count`` pairs (``LSB_MCPU_HOSTS``).
The first appearance of a host fixes its place in the node order, which every node computes
alike from the same list, so no node talks to another.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from hpclaunch.adapters.base import master_port, node_slots
from hpclaunch.errors import AdapterError
from hpclaunch.model.world import Host, World, is_decimal
from hpclaunch.options import WorldOptions

#: Largest host file read: a line per slot of a 100,000-node job is a few MiB.
MAX_HOSTFILE_BYTES = 64 * 1024 * 1024

#: Variables an MPI launcher (or jsrun) sets that say how many processes it started and
#: which of them this is on its host. One hpclaunch per host is the only right launch.
LOCAL_RANK_VARS = (
    "PALS_LOCAL_RANKID", "PMI_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
    "JSM_NAMESPACE_LOCAL_RANK",
)
LOCAL_SIZE_VARS = ("PMI_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "JSM_NAMESPACE_SIZE")


def read_host_lines(path: str, variable: str) -> List[str]:
    """The host names in the file ``variable`` names, one per line, blank lines dropped."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_HOSTFILE_BYTES + 1)
    except OSError as exc:
        raise AdapterError(
            f"cannot read {variable} {path!r} ({exc.strerror}): run hpclaunch inside the job, "
            "on its hosts"
        ) from None
    if len(data) > MAX_HOSTFILE_BYTES:
        raise AdapterError(f"{variable} {path!r} is larger than {MAX_HOSTFILE_BYTES} bytes")
    lines = [line.split()[0] for line in data.decode("utf-8", "replace").splitlines()
             if line.strip()]
    if not lines:
        raise AdapterError(f"{variable} {path!r} lists no hosts")
    return lines


def slot_counts(names: Iterable[str]) -> Dict[str, int]:
    """Host -> number of entries, in order of first appearance (the node order)."""
    counts: Dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


def host_index(names: Sequence[str], hostname: str) -> Optional[int]:
    """This host's place: its exact name, else its short name if exactly one entry has it
    (schedulers list FQDNs or short names, and the host may call itself either)."""
    if hostname in names:
        return names.index(hostname)
    short = hostname.split(".", 1)[0]
    matches = [i for i, name in enumerate(names) if name.split(".", 1)[0] == short]
    return matches[0] if len(matches) == 1 else None


def shown(names: Sequence[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    value = env.get(name, "").strip()
    return int(value) if is_decimal(value) else None


def check_one_per_host(env: Mapping[str, str], hosts: int, source: str, how: str) -> None:
    """hpclaunch starts a host's workers itself: a second one per host would double them,
    and a launcher that started fewer than the job's hosts leaves the world incomplete."""
    for name in LOCAL_RANK_VARS:
        value = _int(env, name)
        if value:
            raise AdapterError(
                f"more than one hpclaunch on this host ({name}={value}): hpclaunch starts "
                f"each host's workers itself, so start one per host: {how}"
            )
    for name in LOCAL_SIZE_VARS:
        value = _int(env, name)
        if value is not None and value > 1:
            raise AdapterError(
                f"more than one hpclaunch on this host ({name}={value}): start one per "
                f"host: {how}"
            )
    for name in SIZE_VARS:
        value = _int(env, name)
        if value is not None and value != hosts:
            raise AdapterError(
                f"{value} hpclaunch were started ({name}) for the {hosts} host(s) of "
                f"{source}: start one per host ({how}), or pass --adapter mpi to run on a "
                "subset of the job's hosts"
            )


def job_number(job_id: str, array_index: str = "") -> Tuple[int, int]:
    """``1234.server`` -> (1234, 0); ``123[7].server`` -> (123, 7); ``array_index`` when
    the scheduler gives the index apart. The numbers every node derives its port from."""
    head = job_id.split(".", 1)[0]
    number, _, rest = head.partition("[")
    index = rest.rstrip("]") if rest else array_index.strip()
    if not is_decimal(number):
        raise AdapterError(f"job id {job_id!r} does not start with the job's number")
    return int(number), int(index) if is_decimal(index) else 0


def job_hosts(
    counts: Mapping[str, int],
    node_rank: int,
    gpus: Tuple[Tuple[int, ...], bool],
    nproc_per_node: Optional[int],
    slots_are_workers: bool,
) -> Tuple[Tuple[Host, ...], bool]:
    """Every host's slots, and whether they are GPU ids.

    ``--nproc_per_node`` first (on GPU slots when there are GPUs for one each); else this
    host's GPUs, assumed alike on every host; else, when the scheduler's slots are processes
    (``mpiprocs``, LSF tasks), each host's slot count; else one worker per host.
    """
    ids, usable = gpus
    if nproc_per_node is not None or ids:
        mine, gpu_slots = node_slots(ids, usable, nproc_per_node)
        counted = {name: len(mine) for name in counts}
    elif slots_are_workers:
        mine, gpu_slots = (), False
        counted = dict(counts)
    else:
        mine, gpu_slots = (0,), False
        counted = {name: 1 for name in counts}
    hosts = []
    for index, (name, count) in enumerate(counted.items()):
        slots = mine if index == node_rank and mine else tuple(range(count))
        hosts.append(Host(name, slots))
    return tuple(hosts), gpu_slots


def job_world(
    counts: Mapping[str, int],
    node_rank: int,
    options: WorldOptions,
    gpus: Tuple[Tuple[int, ...], bool],
    source: str,
    slots_are_workers: bool,
    port_numbers: Tuple[int, int],
    run_id: str,
) -> World:
    """The World of a job whose hosts come from a scheduler's host list (``source``), this
    host being ``node_rank`` there; ``port_numbers``: :func:`job_number`'s pair."""
    if options.node_rank is not None and options.node_rank != node_rank:
        raise AdapterError(
            f"--node_rank {options.node_rank} contradicts this host's place {node_rank} "
            f"in {source}: drop --node_rank"
        )
    hosts, gpu_slots = job_hosts(counts, node_rank, gpus, options.nproc_per_node,
                                 slots_are_workers)
    return World(
        hosts=hosts,
        node_rank=node_rank,
        master_addr=options.master_addr or next(iter(counts)),
        master_port=master_port(options, *port_numbers),
        run_id=run_id,
        gpu_slots=gpu_slots,
    )


__all__ = [
    "check_one_per_host",
    "host_index",
    "job_hosts",
    "job_number",
    "job_world",
    "read_host_lines",
    "slot_counts",
]
