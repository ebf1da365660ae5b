"""This machine's GPUs, NVIDIA and AMD, found without torch, NVML or ROCm: one discovery.

What the drivers publish:

* NVIDIA: a directory per GPU under ``/proc/driver/nvidia/gpus/<pci>/``, whose
  ``information`` gives ``Device Minor``, ``GPU UUID`` and ``Model``;
* AMD: ``/sys/class/kfd/kfd/topology/nodes/*/properties`` (``domain`` + ``location_id``
  give the PCI address; nodes whose ``gpu_id`` is 0 are CPUs), else the DRM cards of
  vendor 0x1002 under ``/sys/class/drm/card*/device``;
* the GPU's NUMA node: ``/sys/bus/pci/devices/<pci>/numa_node`` (-1: firmware did not say).

Reading these costs microseconds where ``import torch; torch.cuda.device_count()`` costs
seconds. Both the worker count of the local adapters (:func:`visible_gpus`) and NUMA binding
(:mod:`hpclaunch.machine.topology`) use :func:`discover`, so an AMD node counts its GPUs
as an NVIDIA node does.

Device order. An index in ``CUDA_VISIBLE_DEVICES`` counts GPUs in CUDA's enumeration order.
With ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` that is PCI bus order, which is reproduced exactly.
CUDA's default (``FASTEST_FIRST``) ranks by speed and cannot be known without CUDA; the
driver's minor-number order (``/dev/nvidiaN``, nvidia-smi's index) is used instead, which
equals CUDA's on nodes whose GPUs are all the same model. AMD GPUs are taken in KFD node
order, the order ROCm enumerates them in.
"""

from __future__ import annotations

from typing import Callable, List, Mapping, NamedTuple, Optional, Tuple

from hpclaunch.machine import ROOT_VAR, fields, listdir, read, to_int
from hpclaunch.model.world import is_decimal

NVIDIA_PROC_DIR = "/proc/driver/nvidia/gpus"
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"
AMD_VENDOR = "0x1002"

#: Variables that narrow which GPUs a process sees, by vendor runtime. CUDA's is read first
#: (ROCm's HIP honours it too); HIP's and ROCr's ids are relative to what ROCr exposes.
VISIBLE_DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


class Gpu(NamedTuple):
    """One GPU as the driver lists it; ``numa_node`` None when sysfs does not say (or -1)."""

    vendor: str  # "NVIDIA" or "AMD"
    pci: str  # "0000:18:00.0", lower case
    numa_node: Optional[int]
    minor: Optional[int] = None
    uuid: str = ""
    model: str = ""


def parse_gpu_list(value: str) -> Optional[Tuple[int, ...]]:
    """``"0,1,3"`` -> (0, 1, 3); ``""``/``NoDevFiles`` -> (); UUIDs or garbage -> None (unknown)."""
    value = value.strip()
    if value in ("", "NoDevFiles", "-1"):
        return ()
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not is_decimal(part):
            return None
        ids.append(int(part))
    if len(set(ids)) != len(ids):
        return None
    return tuple(ids)


def gpu_ids_from(value: str) -> Tuple[Tuple[int, ...], bool]:
    """A GPU variable's ids and whether they can be passed on; UUIDs give a count only."""
    parsed = parse_gpu_list(value)
    if parsed is not None:
        return parsed, True
    count = len([part for part in value.split(",") if part.strip()])
    return tuple(range(count)), False


def root_of(env: Mapping[str, str]) -> str:
    """Where this machine's /proc and /sys are read from: "/" unless a test recorded one."""
    return env.get(ROOT_VAR) or "/"


#: The shape of :func:`visible_gpus`: adapters take one, so tests can give recorded GPUs.
GpuProbe = Callable[[Mapping[str, str]], Tuple[Tuple[int, ...], bool]]


def visible_gpus(env: Mapping[str, str]) -> Tuple[Tuple[int, ...], bool]:
    """GPU ids visible to this launcher, and whether they are real ids to pass on.

    ``CUDA_VISIBLE_DEVICES`` wins when it is a list of integers. When it holds UUIDs the
    count alone is known: ids 0..n-1 are returned with ``False``, so workers inherit the
    variable unchanged instead of getting indices that would mean other devices. So are
    ``HIP_VISIBLE_DEVICES``/``ROCR_VISIBLE_DEVICES`` (AMD): workers inherit them as set.
    Without any of them, every GPU the drivers list.
    """
    for name in VISIBLE_DEVICE_VARS:
        value = env.get(name)
        if value is not None:
            ids, usable = gpu_ids_from(value)
            if name != "CUDA_VISIBLE_DEVICES":
                return tuple(range(len(ids))), False
            return ids, usable
    return tuple(range(len(discover(root_of(env))))), True


def discover(root: str = "/", order: str = "FASTEST_FIRST") -> Tuple[Gpu, ...]:
    """Every GPU the drivers list below ``root``, in CUDA's (or ROCm's) enumeration order."""
    return tuple(nvidia_gpus(root, order) or amd_gpus(root))


def pci_numa_node(root: str, pci: str) -> Optional[int]:
    """The node sysfs gives the PCI device; -1 (firmware did not say) and absent -> None."""
    node = to_int(read(root, f"/sys/bus/pci/devices/{pci}/numa_node"))
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
    for name in listdir(root, NVIDIA_PROC_DIR):
        info = fields(read(root, f"{NVIDIA_PROC_DIR}/{name}/information") or "", ":")
        pci = name.lower()
        gpus.append(Gpu("NVIDIA", pci, pci_numa_node(root, pci), to_int(info.get("Device Minor")),
                        info.get("GPU UUID", ""), info.get("Model", "")))
    if order == "PCI_BUS_ID":
        gpus.sort(key=lambda g: _pci_key(g.pci))
    else:
        gpus.sort(key=lambda g: (g.minor if g.minor is not None else 1 << 31, _pci_key(g.pci)))
    return gpus


def amd_gpus(root: str) -> List[Gpu]:
    """KFD nodes whose ``gpu_id`` is not 0, in node order; else DRM cards of vendor 0x1002."""
    return _kfd_gpus(root) or _drm_gpus(root)


def _kfd_gpus(root: str) -> List[Gpu]:
    gpus = []
    for name in sorted(listdir(root, KFD_NODES), key=lambda n: to_int(n) or 0):
        if to_int(read(root, f"{KFD_NODES}/{name}/gpu_id")) in (None, 0):
            continue
        props = fields(read(root, f"{KFD_NODES}/{name}/properties") or "", None)
        location = to_int(props.get("location_id")) or 0
        domain = to_int(props.get("domain")) or 0
        pci = (f"{domain:04x}:{location >> 8:02x}:{(location >> 3) & 0x1F:02x}."
               f"{location & 0x7:x}")
        node = pci_numa_node(root, pci)
        minor = to_int(props.get("drm_render_minor"))
        if node is None and minor is not None:
            fallback = to_int(read(root, f"/sys/class/drm/renderD{minor}/device/numa_node"))
            node = fallback if fallback is not None and fallback >= 0 else None
        unique = to_int(props.get("unique_id"))
        uuid = f"GPU-{unique:016x}" if unique else ""
        gpus.append(Gpu("AMD", pci, node, minor, uuid, props.get("device_id", "")))
    return gpus


def _drm_gpus(root: str) -> List[Gpu]:
    gpus = []
    cards = [n for n in listdir(root, "/sys/class/drm") if n[:4] == "card" and n[4:].isdigit()]
    for name in sorted(cards, key=lambda n: int(n[4:])):
        device = f"/sys/class/drm/{name}/device"
        if (read(root, f"{device}/vendor") or "").strip() != AMD_VENDOR:
            continue
        uevent = fields(read(root, f"{device}/uevent") or "", "=")
        node = to_int(read(root, f"{device}/numa_node"))
        gpus.append(Gpu("AMD", uevent.get("PCI_SLOT_NAME", name).lower(),
                        node if node is not None and node >= 0 else None, int(name[4:])))
    return gpus
