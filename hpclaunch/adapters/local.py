"""This machine alone, no scheduler: the embedded default (``hpclaunch train.py``).

One worker per visible GPU, else one; ``--nproc_per_node`` overrides. Master is 127.0.0.1
and, unless ``--master_port`` is given, 29500 when it is free, else a free port, so two
local jobs on one machine do not collide.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Tuple

from hpclaunch import probe
from hpclaunch.adapters.base import BaseAdapter, WorldOptions
from hpclaunch.errors import AdapterError
from hpclaunch.world import DEFAULT_MASTER_PORT, Host, World


def local_slots(
    gpus: Tuple[int, ...], gpu_ids_usable: bool, nproc_per_node: Optional[int]
) -> Tuple[Tuple[int, ...], bool]:
    """Slot ids for this machine and whether they are GPU ids. Pure.

    Asking for more workers than GPUs (CPU training on a GPU box) gives plain slots, and
    then no CUDA_VISIBLE_DEVICES is set: there is no honest device to give each worker.
    """
    if nproc_per_node is None:
        if gpus:
            return gpus, gpu_ids_usable
        return (0,), False
    if nproc_per_node < 1:
        raise AdapterError(f"--nproc_per_node {nproc_per_node} must be at least 1")
    if gpus and nproc_per_node <= len(gpus):
        return gpus[:nproc_per_node], gpu_ids_usable
    return tuple(range(nproc_per_node)), False


class LocalAdapter(BaseAdapter):
    name = "local"

    def __init__(
        self,
        hostname: Callable[[], str] = probe.hostname,
        port_is_free: Callable[[int], bool] = probe.port_is_free,
        free_port: Callable[[], int] = probe.free_port,
    ) -> None:
        self._hostname = hostname
        self._port_is_free = port_is_free
        self._free_port = free_port

    def detect(self, env: Mapping[str, str]) -> bool:
        return True  # the fallback: always applicable

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        if options.node_rank not in (None, 0):
            raise AdapterError(
                f"--node_rank {options.node_rank} needs a multi-node world: pass --world_info "
                "(or run under srun/mpirun); a local run is node 0 of 1"
            )
        gpus, usable = probe.visible_gpus(env)
        slots, gpu_slots = local_slots(gpus, usable, options.nproc_per_node)
        if options.master_port is not None:
            port = options.master_port
        elif self._port_is_free(DEFAULT_MASTER_PORT):
            port = DEFAULT_MASTER_PORT
        else:
            port = self._free_port()
        return World(
            hosts=(Host(self._hostname(), slots),),
            node_rank=0,
            master_addr=options.master_addr or "127.0.0.1",
            master_port=port,
            run_id=f"hpclaunch-{os.urandom(8).hex()}",
            gpu_slots=gpu_slots,
        )
