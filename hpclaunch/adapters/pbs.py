"""The world of a PBS Pro / OpenPBS job, derived by every host alone from the job's files.

Start one hpclaunch per host of the job: ``pbsdsh -u -- hpclaunch train.py`` (``-u``: one
task per unique host), ``mpiexec --ppn 1 hpclaunch train.py`` (MPICH, Intel MPI, HPE Cray
PALS) or ``mpirun -npernode 1 hpclaunch train.py`` (OpenMPI). The world:

* ``PBS_JOBID`` -- the job (``1234.server``, array sub-jobs ``123[7].server``); run id
  ``pbs-<PBS_JOBID>``, master port derived from the job number and array index (every host
  computes the same; ``--master_port`` overrides);
* ``PBS_NODEFILE`` -- one line per MPI slot (``mpiprocs`` of each chunk): the unique hosts in
  order of first appearance are the nodes, the first is the master;
* this node's rank is this host's position among them (exact name, else a unique short
  name); where the host calls itself by a name the file does not use, the launcher's own
  node index stands in: ``PALS_NODEID`` (Cray PALS ``mpiexec``) or ``PBS_NODENUM``
  (``pbsdsh``), both counted over the same host list;
* workers per host: ``--nproc_per_node``, else this host's GPUs (``CUDA_VISIBLE_DEVICES`` as
  PBS's cgroup hook sets it for ``ngpus=N``, or the driver's), else the host's line count
  (its ``mpiprocs``).

An MPI launcher that put more than one hpclaunch on a host, or started a different number
than the job has hosts, is refused (one line naming the variable); the file is read in
:meth:`PBSAdapter.world`, never in detection.
"""

from __future__ import annotations

from typing import List, Mapping

from hpclaunch.adapters import pbs_job
from hpclaunch.adapters.base import MachineAdapter, optional_int
from hpclaunch.adapters.hostfile import (
    check_one_per_host,
    host_index,
    job_number,
    job_world,
    read_host_lines,
    shown,
    slot_counts,
)
from hpclaunch.errors import AdapterError
from hpclaunch.model.world import World
from hpclaunch.options import WorldOptions

_HOW = "pbsdsh -u -- hpclaunch ..., mpiexec --ppn 1 hpclaunch ..., or mpirun -npernode 1"

#: The launchers' own node indices over the job's unique hosts, in order of preference.
NODE_INDEX_VARS = ("PALS_NODEID", "PBS_NODENUM")


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise AdapterError(
            f"{name} is not set: run hpclaunch inside a PBS job (qsub), one per host: {_HOW}"
        )
    return value


class PBSAdapter(MachineAdapter):
    """World from a PBS Pro / OpenPBS job: ``PBS_JOBID`` + ``PBS_NODEFILE``."""

    name = "pbs"

    def detect(self, env: Mapping[str, str]) -> bool:
        return pbs_job(env)

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        job_id = _required(env, "PBS_JOBID")
        path = _required(env, "PBS_NODEFILE")
        counts = slot_counts(read_host_lines(path, "PBS_NODEFILE"))
        names = list(counts)
        check_one_per_host(env, len(names), "PBS_NODEFILE", _HOW)
        node_rank = self._node_rank(env, names)
        return job_world(counts, node_rank, options, self._gpu_probe(env), "PBS_NODEFILE",
                         slots_are_workers=True,
                         port_numbers=job_number(job_id, env.get("PBS_ARRAY_INDEX", "")),
                         run_id=f"pbs-{job_id}")

    def _node_rank(self, env: Mapping[str, str], names: List[str]) -> int:
        hostname = self._hostname()
        found = host_index(names, hostname)
        if found is not None:
            return found
        for name in NODE_INDEX_VARS:
            index = optional_int(env, name)
            if index is not None:
                if index >= len(names):
                    raise AdapterError(
                        f"{name}={index} but PBS_NODEFILE lists {len(names)} host(s): the "
                        "launcher's node index is not the job's"
                    )
                self._notes = (
                    f"this host ({hostname}) is not named in PBS_NODEFILE: node rank "
                    f"{index} from {name}",
                )
                return index
        raise AdapterError(
            f"this host {hostname!r} is not in PBS_NODEFILE ({shown(names)}): start "
            f"hpclaunch on the job's hosts, one per host: {_HOW}"
        )


__all__ = ["PBSAdapter"]
