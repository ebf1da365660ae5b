"""Which CPUs and which memory are nearest each worker's GPU: read from sysfs, planned purely.

``--numa_binding`` needs three facts the kernel already publishes, so neither torch, NVML nor
numactl is involved (torchrun's ``--numa-binding`` needs both torch.cuda and numactl):

* GPU -> PCI address -> NUMA node. NVIDIA: ``/proc/driver/nvidia/gpus/<pci>/information``
  (``Device Minor``, ``GPU UUID``, ``Model``) and ``/sys/bus/pci/devices/<pci>/numa_node``.
  AMD: ``/sys/class/kfd/kfd/topology/nodes/*/properties`` (``domain`` + ``location_id`` give
  the PCI address; nodes with ``gpu_id`` 0 are CPUs), else ``/sys/class/drm/card*/device``.
* NUMA node -> CPUs (``/sys/devices/system/node/node*/cpulist``), CPU -> socket
  (``topology/physical_package_id``) and SMT siblings (``core_cpus_list``, older kernels
  ``thread_siblings_list``).
* Which memory nodes this process may use (``Mems_allowed_list`` of ``/proc/self/status``:
  a cpuset cgroup narrows it).

Everything is read below a root directory passed in ("/" for the real machine), so tests
run on recorded trees (``tests/fixtures/topology/``); :func:`bind_plan` and the functions it
uses are pure. The only impure entry point is :func:`bind_for_this_machine` at the bottom.

Device order. An index in ``CUDA_VISIBLE_DEVICES`` counts GPUs in CUDA's enumeration order.
With ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` that is PCI bus order, which we reproduce exactly.
CUDA's default (``FASTEST_FIRST``) ranks by speed and cannot be known without CUDA; we then
use the driver's minor-number order (``/dev/nvidiaN``, nvidia-smi's index), which equals
CUDA's on nodes whose GPUs are all the same model (the ties are broken by PCI bus id and
minors follow it). On a node with mixed models a warning asks for ``PCI_BUS_ID``. AMD GPUs
are taken in KFD node order, which is the order ROCm enumerates them in.
"""

from __future__ import annotations

import os
from typing import (
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
from hpclaunch.spawner.plan import LaunchPlan

MODES = ("none", "node", "socket", "exclusive")

#: Test-only: a directory to read sysfs/proc from instead of "/" (a recorded topology).
ROOT_VAR = "HPCLAUNCH_TOPOLOGY_ROOT"


class Gpu(NamedTuple):
    """One GPU as the driver lists it; ``numa_node`` None when sysfs does not say (or -1)."""

    vendor: str  # "NVIDIA" or "AMD"
    pci: str  # "0000:18:00.0", lower case
    numa_node: Optional[int]
    minor: Optional[int] = None
    uuid: str = ""
    model: str = ""


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


# --------------------------------------------------------------------------- reading


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
    parts: List[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _read(root: str, path: str) -> Optional[str]:
    try:
        with open(os.path.join(root, path.lstrip("/")), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _listdir(root: str, path: str) -> List[str]:
    try:
        return os.listdir(os.path.join(root, path.lstrip("/")))
    except OSError:
        return []


def _fields(text: str, separator: Optional[str]) -> Dict[str, str]:
    """``Key: value`` lines (NVIDIA, /proc status) or ``key value`` lines (KFD properties)."""
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(separator) if separator else line.partition(" ")
        if key.strip():
            fields[key.strip()] = value.strip()
    return fields


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def pci_numa_node(root: str, pci: str) -> Optional[int]:
    """The node sysfs gives the PCI device; -1 (firmware did not say) and absent -> None."""
    node = _int(_read(root, f"/sys/bus/pci/devices/{pci}/numa_node"))
    return node if node is not None and node >= 0 else None


def _pci_key(pci: str) -> Tuple[int, ...]:
    """``"0000:18:00.0"`` -> (0, 0x18, 0, 0): numeric PCI bus order."""
    try:
        domain, bus, rest = pci.split(":")
        device, function = rest.split(".")
        return (int(domain, 16), int(bus, 16), int(device, 16), int(function, 16))
    except ValueError:
        return (1 << 32,)


def nvidia_gpus(root: str, order: str) -> List[Gpu]:
    gpus = []
    for name in _listdir(root, "/proc/driver/nvidia/gpus"):
        info = _fields(_read(root, f"/proc/driver/nvidia/gpus/{name}/information") or "", ":")
        pci = name.lower()
        gpus.append(Gpu("NVIDIA", pci, pci_numa_node(root, pci), _int(info.get("Device Minor")),
                        info.get("GPU UUID", ""), info.get("Model", "")))
    if order == "PCI_BUS_ID":
        gpus.sort(key=lambda g: _pci_key(g.pci))
    else:
        gpus.sort(key=lambda g: (g.minor if g.minor is not None else 1 << 31, _pci_key(g.pci)))
    return gpus


def amd_gpus(root: str) -> List[Gpu]:
    """KFD nodes whose ``gpu_id`` is not 0, in node order; else DRM cards of vendor 0x1002."""
    base = "/sys/class/kfd/kfd/topology/nodes"
    gpus = []
    for name in sorted(_listdir(root, base), key=lambda n: _int(n) or 0):
        if _int(_read(root, f"{base}/{name}/gpu_id")) in (None, 0):
            continue
        props = _fields(_read(root, f"{base}/{name}/properties") or "", None)
        location = _int(props.get("location_id")) or 0
        domain = _int(props.get("domain")) or 0
        pci = (f"{domain:04x}:{location >> 8:02x}:{(location >> 3) & 0x1F:02x}."
               f"{location & 0x7:x}")
        node = pci_numa_node(root, pci)
        minor = _int(props.get("drm_render_minor"))
        if node is None and minor is not None:
            fallback = _int(_read(root, f"/sys/class/drm/renderD{minor}/device/numa_node"))
            node = fallback if fallback is not None and fallback >= 0 else None
        unique = _int(props.get("unique_id"))
        uuid = f"GPU-{unique:016x}" if unique else ""
        gpus.append(Gpu("AMD", pci, node, minor, uuid, props.get("device_id", "")))
    if gpus:
        return gpus
    cards = [n for n in _listdir(root, "/sys/class/drm") if n[:4] == "card" and n[4:].isdigit()]
    for name in sorted(cards, key=lambda n: int(n[4:])):
        device = f"/sys/class/drm/{name}/device"
        if (_read(root, f"{device}/vendor") or "").strip() != "0x1002":
            continue
        uevent = _fields(_read(root, f"{device}/uevent") or "", "=")
        node = _int(_read(root, f"{device}/numa_node"))
        gpus.append(Gpu("AMD", uevent.get("PCI_SLOT_NAME", name).lower(),
                        node if node is not None and node >= 0 else None, int(name[4:])))
    return gpus


def read_topology(root: str = "/", device_order: Optional[str] = None) -> Topology:
    """Everything :func:`plan_binding` needs, read below ``root`` (no other I/O)."""
    order = "PCI_BUS_ID" if (device_order or "").strip() == "PCI_BUS_ID" else "FASTEST_FIRST"
    gpus = nvidia_gpus(root, order) or amd_gpus(root)
    node_cpus: Dict[int, FrozenSet[int]] = {}
    for name in _listdir(root, "/sys/devices/system/node"):
        if name.startswith("node") and name[4:].isdigit():
            text = _read(root, f"/sys/devices/system/node/{name}/cpulist")
            node_cpus[int(name[4:])] = parse_cpulist(text or "")
    cpu_socket: Dict[int, int] = {}
    cpu_core: Dict[int, FrozenSet[int]] = {}
    for cpu in sorted(set().union(*node_cpus.values()) if node_cpus else ()):
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        socket = _int(_read(root, f"{topo}/physical_package_id"))
        cpu_socket[cpu] = socket if socket is not None else 0
        siblings = _read(root, f"{topo}/core_cpus_list") or _read(
            root, f"{topo}/thread_siblings_list")
        cpu_core[cpu] = parse_cpulist(siblings) if siblings else frozenset((cpu,))
    status = _fields(_read(root, "/proc/self/status") or "", ":")
    mems = status.get("Mems_allowed_list")
    return Topology(tuple(gpus), node_cpus, cpu_socket, cpu_core,
                    parse_cpulist(mems) if mems else None, order)


# --------------------------------------------------------------------------- planning


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


def check_flags(mode: str, bind_cores_to_rank: bool, bind_core_list: Optional[str]) -> None:
    """--numa_binding chooses CPUs by GPU; --bind_cores_to_rank/--bind_core_list share them
    evenly (DeepSpeed's meaning, unchanged). Both at once would be two answers: refuse."""
    if mode != "none" and (bind_cores_to_rank or bind_core_list):
        raise UsageError(
            f"--numa_binding {mode} and --bind_cores_to_rank/--bind_core_list both choose "
            "each worker's CPUs: use one (narrow the CPUs with taskset or srun --cpu-bind "
            "instead of --bind_core_list)"
        )


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


def bind_for_this_machine(plan: LaunchPlan, mode: str, env: Mapping[str, str]) -> LaunchPlan:
    """The CLI's one call: read this machine (or ``$HPCLAUNCH_TOPOLOGY_ROOT``), plan, report.

    The allowed CPUs are the launcher's own affinity, which Slurm's cpuset cgroup and
    ``--cpu-bind`` or a ``taskset`` already narrowed. libc is loaded here, before any fork,
    when a worker's memory is to be bound (see :mod:`hpclaunch.spawner.binding`).
    """
    from hpclaunch import reporter
    from hpclaunch.spawner import binding

    root = env.get(ROOT_VAR) or "/"
    allowed = frozenset(os.sched_getaffinity(0))
    topology = read_topology(root, env.get("CUDA_DEVICE_ORDER"))
    plan, lines, warnings = bind_plan(plan, mode, topology, env, allowed, root)
    if any(spec.mem_node is not None for spec in plan.workers):
        why = binding.memory_binding_unavailable()  # also loads libc, before any fork
        if why:
            warnings.append(f"memory binding is not available here ({why}): workers' CPUs "
                            "are bound, their memory is not")
            plan = plan._replace(workers=tuple(s._replace(mem_node=None) for s in plan.workers))
            lines = [line.replace(", memory node ", ", memory unbound, near node ")
                     for line in lines]
    out = reporter.get()
    for warning in warnings:
        out.warning(warning)
    out.emit(reporter.DEBUG, lines)
    return plan
