"""hpclaunch adapter for PBS Pro / OpenPBS jobs: one hpclaunch per node of the job.

Start it once per node, e.g. ``pbsdsh -u -- hpclaunch train.py`` (``-u``: one task per
unique host) or ``mpiexec -ppn 1 hpclaunch --adapter pbs train.py``. The world comes from the
job's environment:

* ``PBS_JOBID`` -- the job, and the run id every node shares (``1234.server``);
* ``PBS_NODEFILE`` -- the job's hosts, one line per MPI process slot (``mpiprocs``): the
  first appearance of a host fixes its place (node order), the number of its lines its
  worker count, unless GPUs or ``--nproc_per_node`` say otherwise;
* this node's index is its host's position in that list (PBS gives a per-node task no
  index of its own that is the same under ``pbsdsh`` and ``mpiexec``);
* ``CUDA_VISIBLE_DEVICES``, when PBS's cgroup hook set it (``ngpus=N``): this node's GPUs.

The master is the first host, on a port derived from the job number, so every node agrees
without talking. Only public hpclaunch names are used (see hpclaunch's docs/api.md).
"""

from __future__ import annotations

import socket
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from hpclaunch import AdapterError, BaseAdapter, Host, World, WorldOptions

__version__ = "0.1.0"

#: Ports derived from the job number fall in [BASE_PORT, BASE_PORT + PORT_SPAN).
BASE_PORT = 29500
PORT_SPAN = 10000


def read_nodefile(path: str) -> List[str]:
    """The host names in ``PBS_NODEFILE``, one per line, blank lines dropped."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError as exc:
        raise AdapterError(
            f"cannot read PBS_NODEFILE {path!r} ({exc.strerror}): run hpclaunch inside the "
            "PBS job, on its nodes"
        ) from None


def slots_per_host(lines: List[str]) -> Dict[str, int]:
    """Host -> number of lines, in order of first appearance (dict order)."""
    counts: Dict[str, int] = {}
    for name in lines:
        counts[name] = counts.get(name, 0) + 1
    return counts


def this_node(hosts: List[str], hostname: str) -> int:
    """This host's index: exact name first, then the short name (PBS may list FQDNs)."""
    if hostname in hosts:
        return hosts.index(hostname)
    short = hostname.split(".", 1)[0]
    matches = [i for i, name in enumerate(hosts) if name.split(".", 1)[0] == short]
    if len(matches) == 1:
        return matches[0]
    raise AdapterError(
        f"this host {hostname!r} is not in PBS_NODEFILE ({', '.join(hosts[:4])}"
        f"{', ...' if len(hosts) > 4 else ''}): start hpclaunch on the job's nodes, one per "
        "node (pbsdsh -u, or mpiexec -ppn 1)"
    )


def job_port(job_id: str) -> int:
    """``1234.server`` -> a port every node derives alike (torch's default 29500 + job % span)."""
    digits = job_id.split(".", 1)[0].split("[", 1)[0]
    number = int(digits) if digits.isascii() and digits.isdigit() else sum(job_id.encode())
    return BASE_PORT + number % PORT_SPAN


def gpu_ids(env: Mapping[str, str]) -> Optional[Tuple[int, ...]]:
    """This node's GPU ids from ``CUDA_VISIBLE_DEVICES`` (integers only), or None."""
    value = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def worker_slots(
    gpus: Optional[Tuple[int, ...]], nproc_per_node: Optional[int]
) -> Tuple[Tuple[int, ...], int, bool]:
    """(this node's slot ids, workers on every node or 0 = "the nodefile's count", whether
    the ids are GPU ids). GPUs win over the nodefile; ``--nproc_per_node`` over both, keeping
    GPU ids only when there are enough GPUs for one each."""
    if nproc_per_node is not None:
        if gpus is not None and nproc_per_node <= len(gpus):
            return gpus[:nproc_per_node], nproc_per_node, True
        return tuple(range(nproc_per_node)), nproc_per_node, False
    if gpus is not None:
        return gpus, len(gpus), True
    return (), 0, False


class PBSAdapter(BaseAdapter):
    """World from a PBS Pro / OpenPBS job: ``PBS_JOBID`` + ``PBS_NODEFILE``."""

    name = "pbs"

    def __init__(self, hostname: Callable[[], str] = socket.gethostname) -> None:
        self._hostname = hostname

    def detect(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("PBS_JOBID", "").strip() and env.get("PBS_NODEFILE", "").strip())

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        job_id = env.get("PBS_JOBID", "").strip()
        path = env.get("PBS_NODEFILE", "").strip()
        if not job_id or not path:
            raise AdapterError(
                "the pbs adapter needs PBS_JOBID and PBS_NODEFILE: run hpclaunch inside a PBS "
                "job (qsub), one per node"
            )
        counts = slots_per_host(read_nodefile(path))
        if not counts:
            raise AdapterError(f"PBS_NODEFILE {path!r} lists no hosts")
        names = list(counts)
        node_rank = this_node(names, self._hostname())
        if options.node_rank is not None and options.node_rank != node_rank:
            raise AdapterError(
                f"--node_rank {options.node_rank} contradicts this host's place {node_rank} in "
                "PBS_NODEFILE: drop --node_rank"
            )
        slots, per_host, gpu_slots = worker_slots(gpu_ids(env), options.nproc_per_node)
        hosts = tuple(
            Host(name, slots if index == node_rank and slots else tuple(range(per_host or n)))
            for index, (name, n) in enumerate(counts.items())
        )
        return World(
            hosts=hosts,
            node_rank=node_rank,
            master_addr=options.master_addr or names[0],
            master_port=options.master_port or job_port(job_id),
            run_id=f"pbs-{job_id}",
            gpu_slots=gpu_slots,
        )


__all__ = [
    "PBSAdapter", "job_port", "read_nodefile", "slots_per_host", "this_node", "worker_slots",
]
