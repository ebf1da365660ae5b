"""This machine's NUMA layout, read from sysfs: nodes and their CPUs, sockets, SMT siblings.

* NUMA node -> CPUs (``/sys/devices/system/node/node*/cpulist``), CPU -> socket
  (``topology/physical_package_id``) and SMT siblings (``core_cpus_list``, older kernels
  ``thread_siblings_list``);
* which memory nodes this process may use (``Mems_allowed_list`` of ``/proc/self/status``:
  a cpuset cgroup narrows it);
* the GPUs and their nodes (:func:`hpclaunch.machine.gpus.discover`).

The result is a :class:`~hpclaunch.model.binding.Topology`, which the pure binding plan
takes as a value.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Optional

from hpclaunch.machine import fields, listdir, read, to_int
from hpclaunch.machine.gpus import discover
from hpclaunch.model.binding import Topology, parse_cpulist


def read_topology(root: str = "/", device_order: Optional[str] = None) -> Topology:
    """Everything :func:`~hpclaunch.model.binding.plan_binding` needs, read below ``root``."""
    order = "PCI_BUS_ID" if (device_order or "").strip() == "PCI_BUS_ID" else "FASTEST_FIRST"
    node_cpus: Dict[int, FrozenSet[int]] = {}
    for name in listdir(root, "/sys/devices/system/node"):
        if name.startswith("node") and name[4:].isdigit():
            text = read(root, f"/sys/devices/system/node/{name}/cpulist")
            node_cpus[int(name[4:])] = parse_cpulist(text or "")
    cpu_socket: Dict[int, int] = {}
    cpu_core: Dict[int, FrozenSet[int]] = {}
    for cpu in sorted(set().union(*node_cpus.values()) if node_cpus else ()):
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        socket = to_int(read(root, f"{topo}/physical_package_id"))
        cpu_socket[cpu] = socket if socket is not None else 0
        siblings = read(root, f"{topo}/core_cpus_list") or read(
            root, f"{topo}/thread_siblings_list")
        cpu_core[cpu] = parse_cpulist(siblings) if siblings else frozenset((cpu,))
    status = fields(read(root, "/proc/self/status") or "", ":")
    mems = status.get("Mems_allowed_list")
    return Topology(discover(root, order), node_cpus, cpu_socket, cpu_core,
                    parse_cpulist(mems) if mems else None, order)


__all__ = ["read_topology"]
