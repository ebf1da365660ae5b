"""Adapter registry and auto-detection: one ordered list, with the reason for each place.

Order (first whose ``detect`` is true wins under ``--adapter auto``):

1. ``explicit`` -- ``--world_info`` was given: the user (or DeepSpeed's runner) said exactly
   what the world is, so no environment may override it.
2. ``slurm`` -- inside a Slurm job step. Checked before MPI because ``srun`` of an MPI build
   exports PMI variables too, and Slurm's own variables are the more precise description.
   (The adapter itself handles an sbatch script outside ``srun``.)
3. ``mpi`` -- an MPI launcher's environment (OpenMPI/PMIx, MPICH/Hydra, ...).
4. ``local`` -- no scheduler at all: this machine alone.

Modules are imported only when chosen, so that detection stays cheap and mpi4py is never
imported unless the MPI adapter runs.
"""

from __future__ import annotations

import importlib
from typing import Dict, Mapping, Optional, Tuple

from hpclaunch.adapters.base import Adapter, WorldOptions
from hpclaunch.errors import UsageError

#: name -> (module, class), in detection order.
ADAPTERS: Dict[str, Tuple[str, str]] = {
    "explicit": ("hpclaunch.adapters.explicit", "ExplicitAdapter"),
    "slurm": ("hpclaunch.adapters.slurm", "SlurmAdapter"),
    "mpi": ("hpclaunch.adapters.mpi", "MPIAdapter"),
    "local": ("hpclaunch.adapters.local", "LocalAdapter"),
}

ADAPTER_NAMES = ("auto",) + tuple(ADAPTERS)


def load(name: str) -> Adapter:
    module_name, class_name = ADAPTERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"adapter {name!r} is not available in this installation ({exc})"
        ) from None
    adapter: Adapter = getattr(module, class_name)()
    return adapter


def select(env: Mapping[str, str], options: WorldOptions, forced: Optional[str] = None) -> Adapter:
    """The adapter named by ``--adapter``, or the first in :data:`ADAPTERS` that detects."""
    if forced and forced != "auto":
        if forced not in ADAPTERS:
            raise UsageError(
                f"unknown adapter {forced!r}: use one of {', '.join(ADAPTER_NAMES)}"
            )
        return load(forced)
    if options.world_info is not None:
        return load("explicit")
    for name in ADAPTERS:
        if name == "explicit":
            continue
        adapter = load(name)
        if adapter.detect(env):
            return adapter
    return load("local")


__all__ = ["ADAPTERS", "ADAPTER_NAMES", "Adapter", "WorldOptions", "load", "select"]
