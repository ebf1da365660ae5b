"""The world of a Slurm job step, derived by every node alone from its own ``SLURM_*`` variables.

Run as ``srun --ntasks-per-node=1 hpclaunch train.py``: one launcher per node, which starts
that node's workers. No node talks to another or to the controller, so everything a node
puts into the World must be something Slurm told *every* node identically:

* the nodes and their order: the step's node list (``SLURM_STEP_NODELIST``), expanded as Slurm
  does (:mod:`hpclaunch.hostlist`); this node is ``SLURM_NODEID`` in it; the master is the
  first node, by the name Slurm uses for it;
* the master port: a function of job id and step id (two steps, or two jobs sharing a node,
  get different ports), below the Linux ephemeral range so that no outgoing connection holds
  it by chance; ``--master_port`` overrides;
* workers per node: ``--nproc_per_node`` when given; else the GPUs Slurm gave this node's
  step, assumed equal on every node (:func:`gpu_count_per_node` says when Slurm proves
  otherwise, and fails, and where it cannot tell); else one.

GPU ids of *other* nodes are never told to a node, and are never needed: each launcher only
hands its own node's ids to its own workers. So this node's entry lists its real GPU ids
(``CUDA_VISIBLE_DEVICES`` as Slurm set it, which already accounts for device cgroups), and
other nodes' entries list 0..n-1; counts, order, ranks, master and run id are identical on
every node.

An sbatch/salloc shell outside ``srun`` has ``SLURM_JOB_ID`` but no step id. There a
one-node job runs on this node with the job's GPUs; anything else is refused with the
``srun`` line to use, because starting workers for other nodes from here is impossible.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

from hpclaunch.adapters import slurm_job
from hpclaunch.adapters.base import (
    PORT_STEPS_PER_JOB,
    BaseAdapter,
    master_port,
    node_slots,
    optional_int,
)
from hpclaunch.errors import AdapterError, HostlistError
from hpclaunch.machine import gpus as machine_gpus
from hpclaunch.model.hostlist import expand_hostlist, parse_counts
from hpclaunch.model.world import Host, World, is_decimal
from hpclaunch.options import WorldOptions

#: The sbatch shell has no step id; it takes the last slot of its job's block.
BATCH_STEP_SLOT = PORT_STEPS_PER_JOB - 1

_SRUN_HINT = "srun --ntasks-per-node=1 hpclaunch ..."



def _required(env: Mapping[str, str], name: str, why: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise AdapterError(f"{name} is not set: {why}")
    return value


def _int_var(env: Mapping[str, str], name: str, why: str) -> int:
    value = _required(env, name, why)
    if not is_decimal(value):
        raise AdapterError(f"{name}={value!r} is not a non-negative integer: {why}")
    return int(value)


def step_id(env: Mapping[str, str]) -> Optional[str]:
    """``SLURM_STEP_ID`` (or the older ``SLURM_STEPID``); None in an sbatch/salloc shell."""
    for name in ("SLURM_STEP_ID", "SLURM_STEPID"):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _expand(name: str, value: str) -> List[str]:
    try:
        hosts = expand_hostlist(value)
    except HostlistError as exc:
        raise AdapterError(f"{name} is not a valid Slurm hostlist: {exc}") from None
    if not hosts:
        raise AdapterError(f"{name} is empty: it must list the step's nodes")
    return hosts


def step_nodes(env: Mapping[str, str]) -> List[str]:
    """The step's nodes in Slurm's order.

    ``SLURM_STEP_NODELIST`` is the step's own list. The job-level lists are accepted only as a
    fallback whose length matches the step's node count: inside an sbatch job,
    ``SLURM_NODELIST`` of a one-node step still names every node of the job.
    """
    value = env.get("SLURM_STEP_NODELIST", "").strip()
    if value:
        hosts = _expand("SLURM_STEP_NODELIST", value)
        expected = optional_int(env, "SLURM_STEP_NUM_NODES")
        if expected is not None and expected != len(hosts):
            raise AdapterError(
                f"SLURM_STEP_NODELIST lists {len(hosts)} node(s) but SLURM_STEP_NUM_NODES="
                f"{expected}: the Slurm environment is inconsistent (nested allocation?)"
            )
        return hosts
    expected = optional_int(env, "SLURM_STEP_NUM_NODES")
    if expected is None:
        expected = optional_int(env, "SLURM_NNODES")
    for name in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        value = env.get(name, "").strip()
        if value:
            hosts = _expand(name, value)
            if expected is None or expected == len(hosts):
                return hosts
    raise AdapterError(
        "SLURM_STEP_NODELIST is not set (and no job node list matches the step's node "
        f"count): run hpclaunch as a Slurm job step, e.g. {_SRUN_HINT}"
    )


def check_one_task_per_node(env: Mapping[str, str], num_nodes: int) -> None:
    """hpclaunch starts the workers itself: a second hpclaunch on a node would double them.

    ``SLURM_STEP_TASKS_PER_NODE`` is the step's truth. ``SLURM_NTASKS_PER_NODE`` is consulted
    only without it, because inside sbatch it keeps the *job's* value in every step (a
    ``srun -n1`` step of an ``--ntasks-per-node=4`` job still shows 4).
    """
    localid = optional_int(env, "SLURM_LOCALID")
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE", "").strip()
    source = "SLURM_STEP_TASKS_PER_NODE"
    if not per_node:
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").strip()
        source = "SLURM_NTASKS_PER_NODE"
    counts: List[int] = []
    if per_node:
        try:
            counts = parse_counts(per_node)
        except HostlistError as exc:
            raise AdapterError(f"{source} is malformed: {exc}") from None
    if (localid or 0) > 0 or any(count > 1 for count in counts):
        raise AdapterError(
            f"more than one hpclaunch task per node ({source}={per_node or '?'}, "
            f"SLURM_LOCALID={localid}): hpclaunch starts each node's workers itself, so launch "
            f"one per node: {_SRUN_HINT} (inside sbatch also -n $SLURM_NNODES, or "
            "#SBATCH --ntasks-per-node=1)"
        )
    if source == "SLURM_STEP_TASKS_PER_NODE" and counts and len(counts) != num_nodes:
        raise AdapterError(
            f"SLURM_STEP_TASKS_PER_NODE={per_node} has {len(counts)} entries for "
            f"{num_nodes} node(s): the Slurm environment is inconsistent"
        )


def check_mpi_launcher(env: Mapping[str, str], num_nodes: int) -> None:
    """mpirun inside an allocation starts its daemons with srun, so its ranks look like a
    Slurm step of one task per node even when mpirun put several hpclaunch on a node."""
    for size_name, local_name in (
        ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
        ("PMI_SIZE", "MPI_LOCALNRANKS"),
    ):
        size = optional_int(env, size_name)
        local = optional_int(env, local_name)
        if (size is not None and size != num_nodes) or (local is not None and local > 1):
            raise AdapterError(
                f"an MPI launcher started {size if size is not None else '?'} hpclaunch "
                f"process(es) ({size_name}) on a Slurm step of {num_nodes} node(s): start one "
                "per node (mpirun -npernode 1), or pass --adapter mpi"
            )


def this_node_gpus(
    env: Mapping[str, str], gpu_probe: machine_gpus.GpuProbe
) -> Tuple[Tuple[int, ...], bool]:
    """GPU ids Slurm gave this step on this node, and whether they are ids to pass on.

    ``CUDA_VISIBLE_DEVICES`` first: it is what CUDA will honour (relative ids under device
    cgroups, where ``SLURM_STEP_GPUS`` holds the absolute ones). UUIDs tell only a count.
    Without any Slurm GPU variable, GPUs Slurm does not manage are found by ``gpu_probe``.
    """
    for name in ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = env.get(name)
        if value is None:
            continue
        return machine_gpus.gpu_ids_from(value)
    return gpu_probe(env)


def _gpu_request(value: str, name: str) -> int:
    """``2``, ``a100:2`` or ``a100:1,v100:1`` -> GPUs per node (the sum of the counts)."""
    total = 0
    for part in value.split(","):
        count = part.strip().rsplit(":", 1)[-1]
        if not is_decimal(count):
            raise AdapterError(f"{name}={value!r} is not a GPU count like 2 or a100:2")
        total += int(count)
    return total


def gpu_count_per_node(env: Mapping[str, str], local_count: int, num_nodes: int) -> int:
    """GPUs on *every* node: this node's count, unless Slurm's variables prove otherwise.

    Every way to give a step GPUs is per node (``--gpus-per-node``, ``--gres=gpu:N``,
    ``--gpus-per-task`` with one task per node) except ``--gpus=N`` in total, which Slurm may
    spread unevenly without telling any node the others' share. Job-level variables cannot
    be trusted for more: an ``srun --gpus-per-node=1`` step of a ``--gpus-per-node=2`` job
    still shows ``SLURM_GPUS_PER_NODE=2`` (measured on Slurm 22.05), so the step's own GPUs
    decide. With ``SLURM_GPUS`` (sbatch/salloc ``--gpus=N``) and no per-node request, a
    total that is not ``nodes x this node's count`` proves an uneven spread: refuse with the
    fix. Limits, documented in examples/slurm/README.md: an ``srun``-only ``--gpus=N``
    exports nothing to the tasks, and with 3+ nodes a total that happens to equal
    ``nodes x count`` can still hide an uneven spread; there ``--gpus-per-node`` or
    ``--nproc_per_node`` is the fix.
    """
    total = env.get("SLURM_GPUS", "").strip()
    if total and num_nodes > 1 and not env.get("SLURM_GPUS_PER_NODE", "").strip():
        requested = _gpu_request(total, "SLURM_GPUS")
        if requested != local_count * num_nodes:
            raise AdapterError(
                f"the job asked for --gpus={total} in total and this node got {local_count} "
                f"of them, so the {num_nodes} nodes have different GPU counts that Slurm does "
                "not tell each node: request --gpus-per-node=N (or --gres=gpu:N), or pass "
                "--nproc_per_node N"
            )
    return local_count


def _node_rank(env: Mapping[str, str], hosts: Sequence[str], options: WorldOptions) -> int:
    node_id = _int_var(env, "SLURM_NODEID", "it is this node's index in the step's node list")
    if node_id >= len(hosts):
        raise AdapterError(
            f"SLURM_NODEID={node_id} is outside the step's {len(hosts)} node(s): "
            "the Slurm environment is inconsistent"
        )
    if options.node_rank is not None and options.node_rank != node_id:
        raise AdapterError(
            f"--node_rank {options.node_rank} contradicts SLURM_NODEID={node_id}: under "
            "srun the node rank comes from Slurm; drop --node_rank"
        )
    name = env.get("SLURMD_NODENAME", "").strip()
    if name and name != hosts[node_id]:
        raise AdapterError(
            f"SLURMD_NODENAME={name} but node {node_id} of the step is {hosts[node_id]}: "
            "the Slurm variables come from another step or job (nested srun?)"
        )
    return node_id


class SlurmAdapter(BaseAdapter):
    """World from a Slurm job step (or a one-node sbatch shell)."""

    name = "slurm"

    def __init__(self, gpu_probe: machine_gpus.GpuProbe = machine_gpus.visible_gpus) -> None:
        self._gpu_probe = gpu_probe

    def detect(self, env: Mapping[str, str]) -> bool:
        """Inside a job: a step, or an sbatch/salloc shell (where :meth:`world` decides)."""
        return slurm_job(env)

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        job_id = _int_var(env, "SLURM_JOB_ID", f"run hpclaunch inside a Slurm job: {_SRUN_HINT}")
        step = step_id(env)
        if step is None:
            return self._shell_world(env, options, job_id)
        if not is_decimal(step):
            raise AdapterError(f"SLURM_STEP_ID={step!r} is not a step number")
        hosts = step_nodes(env)
        check_one_task_per_node(env, len(hosts))
        check_mpi_launcher(env, len(hosts))
        node_rank = _node_rank(env, hosts, options)
        gpus, usable = this_node_gpus(env, self._gpu_probe)
        if options.nproc_per_node is not None:
            count = options.nproc_per_node
        elif gpus:
            count = gpu_count_per_node(env, len(gpus), len(hosts))
        else:
            count = 1
        slots, gpu_slots = node_slots(gpus, usable, count)
        world_hosts = tuple(
            Host(name, slots if index == node_rank else tuple(range(len(slots))))
            for index, name in enumerate(hosts)
        )
        return World(
            hosts=world_hosts,
            node_rank=node_rank,
            master_addr=options.master_addr or hosts[0],
            master_port=master_port(options, job_id, int(step)),
            run_id=f"{job_id}.{step}",
            gpu_slots=gpu_slots,
        )

    def _shell_world(self, env: Mapping[str, str], options: WorldOptions, job_id: int) -> World:
        """An sbatch/salloc shell: only a one-node job on this very node can run from here."""
        nodes = optional_int(env, "SLURM_JOB_NUM_NODES") or optional_int(env, "SLURM_NNODES")
        node_list = env.get("SLURM_JOB_NODELIST", "").strip() or env.get("SLURM_NODELIST", "")
        if nodes is None and node_list.strip():
            nodes = len(_expand("SLURM_JOB_NODELIST", node_list))
        if nodes is None:
            raise AdapterError(
                "SLURM_JOB_ID is set but neither SLURM_JOB_NUM_NODES nor SLURM_JOB_NODELIST "
                f"is: run hpclaunch as a job step ({_SRUN_HINT}), or pass --adapter local"
            )
        if nodes < 1:
            raise AdapterError(
                f"the job has {nodes} nodes according to SLURM_JOB_NUM_NODES/SLURM_NNODES: "
                f"the Slurm environment is broken; run {_SRUN_HINT}"
            )
        if nodes > 1:
            raise AdapterError(
                f"this is the batch shell of a {nodes}-node job, outside srun, so only this "
                f"node would run: launch one hpclaunch per node with {_SRUN_HINT}"
            )
        node_name = env.get("SLURMD_NODENAME", "").strip()
        if not node_name:
            raise AdapterError(
                "SLURM_JOB_ID is set but SLURMD_NODENAME is not: this looks like an salloc "
                f"shell on the submit host, not on the allocated node; run {_SRUN_HINT} "
                "(or pass --adapter local to run here anyway)"
            )
        if options.node_rank not in (None, 0):
            raise AdapterError(f"--node_rank {options.node_rank} is impossible in a one-node job")
        self._notes = (
            f"not inside srun: job {job_id} has one node, so its workers start from this batch "
            "shell",
        )
        gpus, usable = this_node_gpus(env, self._gpu_probe)
        slots, gpu_slots = node_slots(gpus, usable, options.nproc_per_node)
        return World(
            hosts=(Host(node_name, slots),),
            node_rank=0,
            master_addr=options.master_addr or "127.0.0.1",
            master_port=master_port(options, job_id, BATCH_STEP_SLOT),
            run_id=f"{job_id}.batch",
            gpu_slots=gpu_slots,
        )


__all__ = ["SlurmAdapter", "step_nodes", "this_node_gpus"]
