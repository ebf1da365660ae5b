"""This machine alone, no scheduler: the embedded default (``hpclaunch train.py``).

One worker per visible GPU (NVIDIA or AMD), else one; ``--nproc_per_node`` overrides.
Master is 127.0.0.1
and, unless ``--master_port`` is given, 29500 when it is free, else a free port, so two
local jobs on one machine do not collide.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

from hpclaunch.adapters.base import BaseAdapter, node_slots
from hpclaunch.errors import AdapterError
from hpclaunch.machine import gpus, network
from hpclaunch.model.world import DEFAULT_MASTER_PORT, Host, World
from hpclaunch.options import WorldOptions


class LocalAdapter(BaseAdapter):
    name = "local"

    def __init__(
        self,
        hostname: Callable[[], str] = network.hostname,
        port_is_free: Callable[[int], bool] = network.port_is_free,
        free_port: Callable[[], int] = network.free_port,
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
        ids, usable = gpus.visible_gpus(env)
        slots, gpu_slots = node_slots(ids, usable, options.nproc_per_node)
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
