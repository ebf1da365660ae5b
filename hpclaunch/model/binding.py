"""Which CPUs and which memory each worker gets: core shares and NUMA binding, planned purely.

Two ways to choose a worker's CPUs, never both at once:

* ``--bind_cores_to_rank`` (DeepSpeed's): :func:`share_cores` cuts the given cores into
  even, disjoint shares, one per local worker;
* ``--numa_binding``: :func:`bind_plan` binds each worker's CPUs and memory to the NUMA node
  (or socket) nearest its GPU, from a :class:`Topology` that :mod:`hpclaunch.machine.topology`
  reads from sysfs (neither torch, NVML nor numactl is involved: torchrun's
  ``--numa-binding`` needs both torch.cuda and numactl).

Device order. An index in ``CUDA_VISIBLE_DEVICES`` counts GPUs in CUDA's enumeration order.
With ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` that is PCI bus order, which we reproduce exactly.
CUDA's default (``FASTEST_FIRST``) ranks by speed and cannot be known without CUDA; we then
use the driver's minor-number order (``/dev/nvidiaN``, nvidia-smi's index), which equals
CUDA's on nodes whose GPUs are all the same model (the ties are broken by PCI bus id and
minors follow it). On a node with mixed models a warning asks for ``PCI_BUS_ID``. AMD GPUs
are taken in KFD node order, which is the order ROCm enumerates them in.
"""

from __future__ import annotations

from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Dict,
    FrozenSet,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

from hpclaunch.errors import UsageError
from hpclaunch.model.world import is_decimal
from hpclaunch.options import check_core_id, clip, format_ranges

if TYPE_CHECKING:
    from hpclaunch.machine.gpus import Gpu
    from hpclaunch.model.plan import LaunchPlan


class Topology(NamedTuple):
    """The machine's GPUs in enumeration order, its NUMA nodes, sockets and cores."""

    gpus: Tuple[Gpu, ...]
    node_cpus: Mapping[int, FrozenSet[int]]
    cpu_socket: Mapping[int, int]
    #: cpu -> the CPUs of its physical core (SMT siblings, itself included)
    cpu_core: Mapping[int, FrozenSet[int]]
    #: memory nodes this process may allocate from; None when unknown (no restriction known)
    mems_allowed: Optional[FrozenSet[int]] = None
    order: str = "FASTEST_FIRST"


class RankBinding(NamedTuple):
    """What one local worker gets: its GPU and node, and the CPUs/memory node to bind to."""

    local_rank: int
    rank: int
    device: str  # the CUDA_VISIBLE_DEVICES entry it uses, or "" when it has none
    gpu: Optional[Gpu]
    node: Optional[int]
    socket: Optional[int]
    cpus: Optional[Tuple[int, ...]]
    mem_node: Optional[int]


# --------------------------------------------------------------------------- core shares


def parse_core_list(text: str) -> Tuple[int, ...]:
    """``"0-3,8,10-11"`` -> (0, 1, 2, 3, 8, 10, 11), in the order given, duplicates refused.

    Every id is checked against Linux's CPU limit before a range is expanded, so a typo
    (``0-99999999999``) is one short line, not gigabytes.
    """
    cores: List[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not is_decimal(lo) or (sep and not is_decimal(hi)):
            raise UsageError(
                f"--bind_core_list has a bad part {clip(repr(part))}: use numbers and ranges "
                "like 0-7,16-23"
            )
        for bound in (lo, hi) if sep else (lo,):
            check_core_id(bound, "--bind_core_list")
        start, end = int(lo), int(hi) if sep else int(lo)
        if end < start:
            raise UsageError(
                f"--bind_core_list range {clip(repr(part))} runs backwards: write it low-high"
            )
        cores.extend(range(start, end + 1))
    if len(set(cores)) != len(cores):
        raise UsageError(
            f"--bind_core_list {clip(repr(text))} lists a core twice: list each core once"
        )
    return tuple(cores)


def share_cores(cores: Sequence[int], workers: int) -> List[Tuple[int, ...]]:
    """Even, disjoint, contiguous shares; the remainder is left idle rather than unbalanced."""
    if workers > len(cores):
        raise UsageError(
            f"--bind_cores_to_rank needs at least one core per worker: {workers} workers but "
            f"{len(cores)} core(s) to share; lower --nproc_per_node or widen --bind_core_list"
        )
    per = len(cores) // workers
    return [tuple(cores[i * per : (i + 1) * per]) for i in range(workers)]


# --------------------------------------------------------------------------- NUMA binding


def parse_cpulist(text: str) -> FrozenSet[int]:
    """The kernel's list format: ``"0-23,48-71"``, ``"5"``, ``""`` (a node without CPUs)."""
    cpus: List[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


def format_cpulist(cpus: Sequence[int]) -> str:
    """(0, 1, 2, 3, 8) -> ``"0-3,8"``: the kernel's format, for reports."""
    return format_ranges(cpus)




def resolve_device(entry: str, topology: Topology) -> Optional[Gpu]:
    """One ``CUDA_VISIBLE_DEVICES`` entry -> the GPU: an index, or ``GPU-<uuid>`` (a unique
    prefix is enough, as CUDA allows). ``MIG-...`` and anything else -> None (unknown)."""
    entry = entry.strip()
    if entry.isdigit():
        index = int(entry)
        return topology.gpus[index] if index < len(topology.gpus) else None
    if entry.startswith("GPU-") and len(entry) > 4:
        found = [g for g in topology.gpus if g.uuid.lower().startswith(entry.lower())]
        return found[0] if len(found) == 1 else None
    return None


def split_exclusive(cpus: AbstractSet[int], cpu_core: Mapping[int, FrozenSet[int]],
                    ways: int) -> List[Tuple[int, ...]]:
    """``ways`` disjoint shares of ``cpus``: whole physical cores, SMT siblings together.

    With at least as many cores as ways each share is whole cores (shares differ by at most
    one core: an extra core helps its rank's data loader more than leaving it idle). With
    fewer, the CPUs are cut in core order, so siblings still stay together where they can.
    """
    cores: Dict[FrozenSet[int], List[int]] = {}
    for cpu in sorted(cpus):
        cores.setdefault(cpu_core.get(cpu, frozenset((cpu,))), []).append(cpu)
    units: List[List[int]] = sorted(cores.values())
    if len(units) < ways:
        units = [[cpu] for unit in units for cpu in unit]
    if len(units) < ways:
        raise UsageError(
            f"--numa_binding exclusive needs a CPU per worker but {ways} workers share "
            f"{len(units)} allowed CPU(s) ({format_cpulist(sorted(cpus))}): use "
            "--numa_binding node, or give the job more CPUs"
        )
    per, extra = divmod(len(units), ways)
    shares = []
    start = 0
    for i in range(ways):
        size = per + (1 if i < extra else 0)
        shares.append(tuple(sorted(c for unit in units[start:start + size] for c in unit)))
        start += size
    return shares


def _socket_of(node: int, topology: Topology) -> Optional[int]:
    sockets = sorted({topology.cpu_socket[c] for c in topology.node_cpus.get(node, ())
                      if c in topology.cpu_socket})
    return sockets[0] if sockets else None


def plan_binding(
    mode: str,
    topology: Topology,
    devices: Sequence[Tuple[int, int, str]],
    allowed: AbstractSet[int],
) -> Tuple[List[RankBinding], List[str]]:
    """Each local worker's binding, and the warnings to show once each. Pure.

    ``devices`` is (local rank, rank, its GPU entry or "") per worker; ``allowed`` the CPUs
    the launcher may use (its ``sched_getaffinity``). A worker whose GPU or node is unknown
    stays unbound: guessing a node would be worse than no binding.
    """
    warnings: List[str] = []
    found = []
    for local_rank, rank, entry in devices:
        gpu = resolve_device(entry, topology) if entry else None
        node = gpu.numa_node if gpu is not None else None
        if gpu is None:
            warnings.append(f"no GPU known for rank {rank} (device {entry or 'none'!r}): "
                            f"rank {rank} left unbound")
        elif node is None:
            warnings.append(f"GPU {entry} ({gpu.pci})'s NUMA node unknown: "
                            f"rank {rank} left unbound")
        found.append((local_rank, rank, entry, gpu, node))
    sharing: Dict[int, List[int]] = {}
    for local_rank, _, _, _, node in found:
        if node is not None:
            sharing.setdefault(node, []).append(local_rank)
    shares: Dict[int, Tuple[int, ...]] = {}
    if mode == "exclusive":
        for node, ranks in sharing.items():
            node_allowed = topology.node_cpus.get(node, frozenset()) & allowed
            if node_allowed:
                for local_rank, share in zip(
                        ranks, split_exclusive(node_allowed, topology.cpu_core, len(ranks))):
                    shares[local_rank] = share
    bindings = []
    for local_rank, rank, entry, gpu, node in found:
        socket = _socket_of(node, topology) if node is not None else None
        cpus: Optional[Tuple[int, ...]] = None
        if node is not None:
            if mode == "exclusive":
                cpus = shares.get(local_rank)
            elif mode == "socket" and socket is not None:
                cpus = tuple(sorted(c for c, s in topology.cpu_socket.items()
                                    if s == socket and c in allowed)) or None
            elif mode == "node":
                cpus = tuple(sorted(topology.node_cpus.get(node, frozenset()) & allowed)) or None
            if cpus is None:
                warnings.append(f"none of NUMA node {node}'s CPUs are allowed here: "
                                f"rank {rank}'s CPUs left unbound")
        mem = node
        if node is not None and topology.mems_allowed is not None \
                and node not in topology.mems_allowed:
            warnings.append(f"memory node {node} is not allowed here (Mems_allowed "
                            f"{format_cpulist(sorted(topology.mems_allowed))}): "
                            f"rank {rank}'s memory left unbound")
            mem = None
        bindings.append(RankBinding(local_rank, rank, entry, gpu, node, socket, cpus, mem))
    return bindings, list(dict.fromkeys(warnings))


def order_warning(topology: Topology) -> Optional[str]:
    """CUDA's default order can differ from the driver's only on a node of mixed models."""
    models = {g.model for g in topology.gpus if g.vendor == "NVIDIA"}
    if topology.order != "PCI_BUS_ID" and len(models) > 1:
        return ("GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's "
                "index order may differ from the driver's; export CUDA_DEVICE_ORDER=PCI_BUS_ID "
                "for an exact --numa_binding")
    return None


def report(mode: str, topology: Topology, bindings: Sequence[RankBinding],
           allowed: AbstractSet[int], root: str) -> List[str]:
    """The ``--log_level debug`` report: one head line, one indented line per worker."""
    vendors = "/".join(sorted({g.vendor for g in topology.gpus}))
    gpus = f"{len(topology.gpus)} {vendors} GPU(s)" if topology.gpus else "no GPUs"
    sockets = len(set(topology.cpu_socket.values()))
    order = ("KFD node order" if vendors == "AMD" else "PCI bus order"
             if topology.order == "PCI_BUS_ID" else "driver minor order")
    lines = [
        f"numa binding {mode}: {sockets} socket(s), {len(topology.node_cpus)} NUMA node(s), "
        f"{gpus} in {order}, allowed CPUs "
        f"{format_cpulist(sorted(allowed))}" + (f" (topology read from {root})"
                                                 if root != "/" else "")
    ]
    for b in bindings:
        where = (f"GPU {b.device or '?'} ({b.gpu.pci if b.gpu else 'not found'}) "
                 f"node {b.node if b.node is not None else '?'} "
                 f"socket {b.socket if b.socket is not None else '?'}")
        cpus = f"cpus {format_cpulist(b.cpus)} ({len(b.cpus)})" if b.cpus else "cpus unbound"
        mem = f"memory node {b.mem_node}" if b.mem_node is not None else "memory unbound"
        lines.append(f"  rank {b.rank} (local {b.local_rank}): {where} -> {cpus}, {mem}")
    return lines


def worker_devices(specs: Sequence[Tuple[int, int, Mapping[str, str]]],
                   base_env: Mapping[str, str]) -> List[Tuple[int, int, str]]:
    """(local rank, rank, GPU entry): entry LOCAL_RANK of the worker's visible devices.

    The worker's ``CUDA_VISIBLE_DEVICES`` is the plan's when it sets one, else the inherited
    one (else HIP's/ROCR's on AMD); with none, every GPU is visible. A worker uses device
    ``LOCAL_RANK`` of that list (``torch.cuda.set_device(local_rank)``, DeepSpeed's rule).
    """
    result = []
    for local_rank, rank, env in specs:
        value = None
        for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
            value = env.get(name, base_env.get(name))
            if value is not None:
                break
        if value is None:
            result.append((local_rank, rank, str(local_rank)))
            continue
        entries = [e.strip() for e in value.split(",") if e.strip()]
        result.append((local_rank, rank, entries[local_rank] if local_rank < len(entries) else ""))
    return result


def job_visible(topology: Topology, env: Mapping[str, str]) -> Topology:
    """The GPUs CUDA enumerates inside a Slurm job whose devices are cgroup-constrained.

    With ``ConstrainDevices=yes`` Slurm renumbers ``CUDA_VISIBLE_DEVICES`` from 0 while
    ``SLURM_STEP_GPUS``/``SLURM_JOB_GPUS`` keep the node's indices (device minors), and
    /proc still lists every GPU of the node: index 0 then means the job's first GPU, not the
    node's. The two lists differ only in that case; then only the job's GPUs count.
    """
    job = env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS") or ""
    ids = [part.strip() for part in job.split(",")]
    if not job or not all(part.isdigit() for part in ids):
        return topology
    visible = [p.strip() for p in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if p.strip()]
    if sorted(visible) == sorted(ids):
        return topology
    minors = {int(part) for part in ids}
    return topology._replace(gpus=tuple(g for g in topology.gpus if g.minor in minors))


def bind_plan(plan: LaunchPlan, mode: str, topology: Topology, base_env: Mapping[str, str],
              allowed: AbstractSet[int], root: str = "/"
              ) -> Tuple[LaunchPlan, List[str], List[str]]:
    """(the plan with each worker's cpus and mem_node, the debug report, warnings). Pure.

    ``exclusive`` also sets ``OMP_NUM_THREADS`` to the worker's share, as
    ``--bind_cores_to_rank`` does; ``node``/``socket`` share their CPUs between the ranks of
    a node, so the thread count is left to the user there.
    """
    topology = job_visible(topology, base_env)
    specs = [(s.local_rank, s.rank, s.env_dict()) for s in plan.workers]
    bindings, warnings = plan_binding(mode, topology, worker_devices(specs, base_env), allowed)
    if not topology.gpus:
        warnings = [f"no GPUs found: --numa_binding {mode} leaves every worker unbound"]
    extra = order_warning(topology)
    if extra:
        warnings.append(extra)
    workers = []
    for spec, bound in zip(plan.workers, bindings):
        env = spec.env
        if mode == "exclusive" and bound.cpus:
            env = tuple((k, v) for k, v in env if k != "OMP_NUM_THREADS") + (
                ("OMP_NUM_THREADS", str(len(bound.cpus))),)
        workers.append(spec._replace(cpus=bound.cpus, mem_node=bound.mem_node, env=env))
    lines = report(mode, topology, bindings, allowed, root)
    return plan._replace(workers=tuple(workers)), lines, warnings
