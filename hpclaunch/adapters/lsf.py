"""The world of an IBM Spectrum LSF job, derived by every host alone from what LSF exports.

Start one hpclaunch per host of the job: ``jsrun -r 1 -a 1 -c ALL_CPUS -g ALL_GPUS hpclaunch
train.py`` on jsrun (CSM) systems, ``mpirun -npernode 1 hpclaunch train.py`` or ``blaunch``
elsewhere. The world:

* ``LSB_JOBID`` (and ``LSB_JOBINDEX`` for an array element) -- run id ``lsf-<id>``, master
  port derived from them (``--master_port`` overrides);
* the hosts: ``LSB_MCPU_HOSTS`` (``host n host n ...``), else ``LSB_DJOB_HOSTFILE`` (a line
  per slot), in order of first appearance; the first is the master;
* on jsrun systems (``JSM_NAMESPACE_*`` set: jsrun started this launcher) the first host is
  the launch ("batch") node, which runs the job script and no workers: it is dropped;
* this node's rank is this host's position (exact name, else a unique short name);
* workers per host: ``--nproc_per_node``, else this host's GPUs (``CUDA_VISIBLE_DEVICES`` as
  LSF or jsrun set it, or the driver's), else, outside jsrun, the host's slot count (LSF's
  slots are tasks: ``-n``/``span[ptile=N]``), and one on jsrun systems (whose slots count
  cores).

More than one hpclaunch per host, or a launcher count other than the host count, is refused
(one line naming the variable). The host file is read in :meth:`LSFAdapter.world` only.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

from hpclaunch.adapters import lsf_job
from hpclaunch.adapters.base import MachineAdapter
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
from hpclaunch.model.world import World, is_decimal
from hpclaunch.options import WorldOptions

_HOW = "jsrun -r 1 -a 1 hpclaunch ..., or mpirun -npernode 1 hpclaunch ..."
#: jsrun's per-task variables: jsrun started this launcher, on a system with a launch node.
JSM_VARS = ("JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK", "JSM_NAMESPACE_LOCAL_RANK")


def parse_mcpu_hosts(value: str) -> Dict[str, int]:
    """``"hostA 4 hostB 4"`` -> {hostA: 4, hostB: 4}, order kept, a repeated host summed."""
    words = value.split()
    if not words or len(words) % 2:
        raise AdapterError(
            f"LSB_MCPU_HOSTS={value.strip()!r} is not 'host count host count ...' pairs"
        )
    counts: Dict[str, int] = {}
    for name, count in zip(words[::2], words[1::2]):
        if not is_decimal(count) or int(count) < 1:
            raise AdapterError(
                f"LSB_MCPU_HOSTS={value.strip()!r}: {count!r} after {name!r} is not a slot count"
            )
        counts[name] = counts.get(name, 0) + int(count)
    return counts


def under_jsrun(env: Mapping[str, str]) -> bool:
    return any(env.get(name, "").strip() for name in JSM_VARS)


class LSFAdapter(MachineAdapter):
    """World from an LSF job: ``LSB_JOBID`` + ``LSB_MCPU_HOSTS`` or ``LSB_DJOB_HOSTFILE``."""

    name = "lsf"

    def detect(self, env: Mapping[str, str]) -> bool:
        return lsf_job(env)

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        job_id = env.get("LSB_JOBID", "").strip()
        if not job_id:
            raise AdapterError(
                f"LSB_JOBID is not set: run hpclaunch inside an LSF job (bsub), one per host: "
                f"{_HOW}"
            )
        counts, source = self._job_hosts(env)
        jsrun = under_jsrun(env)
        if jsrun:
            launch_node = next(iter(counts))
            del counts[launch_node]
            if not counts:
                raise AdapterError(
                    f"{source} lists only the launch node {launch_node}: a jsrun job's first "
                    "host runs no workers; request compute nodes (bsub -nnodes N)"
                )
            self._notes = (f"jsrun system: launch node {launch_node} runs no workers",)
        names = list(counts)
        check_one_per_host(env, len(names), source, _HOW)
        node_rank = host_index(names, self._hostname())
        if node_rank is None:
            raise AdapterError(
                f"this host {self._hostname()!r} is not among the job's hosts in {source} "
                f"({shown(names)}): start hpclaunch on the job's hosts, one per host: {_HOW}"
            )
        index = env.get("LSB_JOBINDEX", "").strip()
        numbers = job_number(job_id, index)
        element = f"[{numbers[1]}]" if numbers[1] else ""
        return job_world(counts, node_rank, options, self._gpu_probe(env), source,
                         slots_are_workers=not jsrun, port_numbers=numbers,
                         run_id=f"lsf-{job_id}{element}")

    def _job_hosts(self, env: Mapping[str, str]) -> Tuple[Dict[str, int], str]:
        mcpu = env.get("LSB_MCPU_HOSTS", "")
        if mcpu.strip():
            return parse_mcpu_hosts(mcpu), "LSB_MCPU_HOSTS"
        path = env.get("LSB_DJOB_HOSTFILE", "").strip()
        if not path:
            raise AdapterError(
                "LSB_MCPU_HOSTS is not set (nor LSB_DJOB_HOSTFILE): LSF gives every task of a "
                "job its hosts; run hpclaunch inside the job"
            )
        lines: List[str] = read_host_lines(path, "LSB_DJOB_HOSTFILE")
        return slot_counts(lines), "LSB_DJOB_HOSTFILE"


__all__ = ["LSFAdapter", "parse_mcpu_hosts"]
