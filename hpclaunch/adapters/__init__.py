"""Adapter registry and auto-detection: one ordered list, with the reason for each place.

Order (first whose ``detect`` is true wins under ``--adapter auto``):

1. ``explicit`` -- ``--world_info`` was given: the user (or DeepSpeed's runner) said exactly
   what the world is, so no environment may override it.
2. ``slurm`` -- inside a Slurm job step. Checked before MPI because ``srun`` of an MPI build
   exports PMI variables too, and Slurm's own variables are the more precise description.
   (The adapter itself handles an sbatch script outside ``srun``.)
3. ``mpi`` -- an MPI launcher's environment (OpenMPI/PMIx, MPICH/Hydra, ...).
4. plug-ins (entry-point group ``hpclaunch.adapters``), by name: a site's scheduler is better
   evidence than none, but the built-ins above have their own, which a plug-in cannot
   overrule unless named with ``--adapter``.
5. ``local`` -- no scheduler at all: this machine alone.

Modules are imported only when chosen, so that detection stays cheap and mpi4py is never
imported unless the MPI adapter runs; plug-ins are listed (a directory scan, no import)
only when a name is not a built-in's or nothing but ``local`` detected.
"""

from __future__ import annotations

import importlib
from typing import Dict, Mapping, Optional, Tuple

from hpclaunch.adapters.base import Adapter, BaseAdapter
from hpclaunch.errors import UsageError
from hpclaunch.options import WorldOptions

#: name -> (module, class), in detection order.
ADAPTERS: Dict[str, Tuple[str, str]] = {
    "explicit": ("hpclaunch.adapters.explicit", "ExplicitAdapter"),
    "slurm": ("hpclaunch.adapters.slurm", "SlurmAdapter"),
    "mpi": ("hpclaunch.adapters.mpi", "MPIAdapter"),
    "local": ("hpclaunch.adapters.local", "LocalAdapter"),
}

#: The built-in choices of ``--adapter``; :func:`adapter_names` adds the plug-ins.
ADAPTER_NAMES = ("auto",) + tuple(ADAPTERS)


def adapter_names() -> Tuple[str, ...]:
    """Every ``--adapter`` choice: auto, the built-ins, then installed plug-ins by name."""
    from hpclaunch.adapters import plugins

    return ADAPTER_NAMES + tuple(sorted(n for n in plugins.scan() if n not in ADAPTERS))


def _load_builtin(name: str) -> Adapter:
    module_name, class_name = ADAPTERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"adapter {name!r} is not available in this installation ({exc})"
        ) from None
    adapter: Adapter = getattr(module, class_name)()
    return adapter


def load(name: str) -> Adapter:
    """The adapter called ``name``: a built-in, else an installed plug-in."""
    if name in ADAPTERS:
        return _load_builtin(name)
    from hpclaunch.adapters import plugins

    found = plugins.scan()
    if name not in found:
        raise UsageError(f"unknown adapter {name!r}: use one of {', '.join(adapter_names())}")
    return plugins.load_plugin(found[name])


def worker_environment(name: str, env: Mapping[str, str]) -> Dict[str, str]:
    """What workers inherit from ``env`` when the world came from adapter ``name`` (a World
    built by hand, ``"api"``, gets the default filter)."""
    adapter: Adapter = BaseAdapter() if name == "api" else load(name)
    return adapter.worker_environment(env)


def _detecting_plugin(env: Mapping[str, str]) -> Optional[Adapter]:
    from hpclaunch.adapters import plugins

    for name, entry in sorted(plugins.scan().items()):
        if name in ADAPTERS:
            raise plugins.PluginError(
                f"{entry.describe()} takes the name of a built-in adapter: rename its entry "
                "point or uninstall that package"
            )
        adapter = plugins.load_plugin(entry)
        if adapter.detect(env):
            return adapter
    return None


def select(env: Mapping[str, str], options: WorldOptions, forced: Optional[str] = None) -> Adapter:
    """The adapter named by ``--adapter`` (``forced``, else ``options.adapter``), or the first
    that detects (see the order above)."""
    forced = forced or options.adapter
    if forced and forced != "auto":
        return load(forced)
    if options.world_info is not None:
        return load("explicit")
    for name in ("slurm", "mpi"):
        adapter = load(name)
        if adapter.detect(env):
            return adapter
    return _detecting_plugin(env) or load("local")


__all__ = [
    "ADAPTERS",
    "ADAPTER_NAMES",
    "Adapter",
    "BaseAdapter",
    "WorldOptions",
    "adapter_names",
    "load",
    "select",
    "worker_environment",
]
