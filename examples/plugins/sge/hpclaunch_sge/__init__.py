"""hpclaunch adapter for Grid Engine jobs (Son of Grid Engine, Altair Grid Engine, Open
Cluster Scheduler): one hpclaunch per host of a parallel-environment job.

Start it once per host, e.g. ``mpirun -npernode 1 hpclaunch --adapter sge train.py``
(OpenMPI's Grid Engine support starts it on each host through ``qrsh -inherit``). The world
comes from the job's environment:

* ``JOB_ID`` (and ``SGE_TASK_ID`` in an array job, ``undefined`` otherwise) -- the job, and
  the run id every host shares (``sge-1234`` / ``sge-1234.7``);
* ``PE_HOSTFILE`` -- the parallel environment's hosts, one line each, ``host slots queue
  processors`` (a host granted slots in two queues has two lines): the first appearance of a
  host fixes its place (node order), its slots summed are its worker count, unless GPUs or
  ``--nproc_per_node`` say otherwise;
* this node's index is its host's position in that list (Grid Engine gives a task started
  with ``qrsh -inherit`` no index of its own);
* ``CUDA_VISIBLE_DEVICES``, when the site's GPU setup set it (a ``gpu`` complex with a
  prolog, or Altair's ``gpu`` resource): this node's GPUs.

The master is the first host, on a port derived from the job number, so every host agrees
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


def read_hostfile(path: str) -> List[Tuple[str, int]]:
    """``PE_HOSTFILE``'s (host, slots) pairs, one per line, in order."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.split() for line in handle if line.strip()]
    except OSError as exc:
        raise AdapterError(
            f"cannot read PE_HOSTFILE {path!r} ({exc.strerror}): run hpclaunch inside the "
            "Grid Engine job, on its hosts"
        ) from None
    pairs = []
    for fields in lines:
        if len(fields) < 2 or not fields[1].isascii() or not fields[1].isdigit():
            raise AdapterError(
                f"PE_HOSTFILE {path!r} has a line {' '.join(fields)!r}: expected "
                "'host slots queue processors'"
            )
        pairs.append((fields[0], int(fields[1])))
    return pairs


def slots_per_host(pairs: List[Tuple[str, int]]) -> Dict[str, int]:
    """Host -> its slots summed over its lines, in order of first appearance (dict order)."""
    counts: Dict[str, int] = {}
    for name, slots in pairs:
        counts[name] = counts.get(name, 0) + slots
    return counts


def this_node(hosts: List[str], hostname: str) -> int:
    """This host's index: exact name first, then the short name (Grid Engine may list FQDNs)."""
    if hostname in hosts:
        return hosts.index(hostname)
    short = hostname.split(".", 1)[0]
    matches = [i for i, name in enumerate(hosts) if name.split(".", 1)[0] == short]
    if len(matches) == 1:
        return matches[0]
    raise AdapterError(
        f"this host {hostname!r} is not in PE_HOSTFILE ({', '.join(hosts[:4])}"
        f"{', ...' if len(hosts) > 4 else ''}): start hpclaunch on the job's hosts, one per "
        "host (mpirun -npernode 1, or qrsh -inherit HOST for each)"
    )


def job_port(job_id: str) -> int:
    """``1234`` -> a port every host derives alike (torch's default 29500 + job % span)."""
    number = int(job_id) if job_id.isascii() and job_id.isdigit() else sum(job_id.encode())
    return BASE_PORT + number % PORT_SPAN


def run_id(job_id: str, task_id: str) -> str:
    """``sge-<JOB_ID>``, with ``.<SGE_TASK_ID>`` for an array task."""
    task = task_id.strip()
    return f"sge-{job_id}" if task in ("", "undefined") else f"sge-{job_id}.{task}"


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
    """(this node's slot ids, workers on every node or 0 = "the host file's count", whether
    the ids are GPU ids). GPUs win over the host file; ``--nproc_per_node`` over both, keeping
    GPU ids only when there are enough GPUs for one each."""
    if nproc_per_node is not None:
        if gpus is not None and nproc_per_node <= len(gpus):
            return gpus[:nproc_per_node], nproc_per_node, True
        return tuple(range(nproc_per_node)), nproc_per_node, False
    if gpus is not None:
        return gpus, len(gpus), True
    return (), 0, False


class SGEAdapter(BaseAdapter):
    """World from a Grid Engine parallel job: ``JOB_ID`` + ``PE_HOSTFILE``."""

    name = "sge"

    def __init__(self, hostname: Callable[[], str] = socket.gethostname) -> None:
        self._hostname = hostname

    def detect(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("JOB_ID", "").strip() and env.get("PE_HOSTFILE", "").strip())

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        job_id = env.get("JOB_ID", "").strip()
        path = env.get("PE_HOSTFILE", "").strip()
        if not job_id or not path:
            raise AdapterError(
                "the sge adapter needs JOB_ID and PE_HOSTFILE: run hpclaunch inside a Grid "
                "Engine parallel job (qsub -pe NAME N), one per host"
            )
        counts = slots_per_host(read_hostfile(path))
        if not counts:
            raise AdapterError(f"PE_HOSTFILE {path!r} lists no hosts")
        names = list(counts)
        node_rank = this_node(names, self._hostname())
        if options.node_rank is not None and options.node_rank != node_rank:
            raise AdapterError(
                f"--node_rank {options.node_rank} contradicts this host's place {node_rank} in "
                "PE_HOSTFILE: drop --node_rank"
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
            run_id=run_id(job_id, env.get("SGE_TASK_ID", "")),
            gpu_slots=gpu_slots,
        )


__all__ = [
    "SGEAdapter", "job_port", "read_hostfile", "run_id", "slots_per_host", "this_node",
    "worker_slots",
]
