"""hpclaunch: a per-node launcher for distributed PyTorch (Slurm, MPI, explicit, local).

The public API (documented in docs/api.md, stable within a major version) is importable
from here; each name is loaded on first use, so ``import hpclaunch`` -- which every
``python -m hpclaunch`` pays for -- stays free::

    import hpclaunch
    world = hpclaunch.detect_world()
    outcome = hpclaunch.launch(hpclaunch.plan(world, ["train.py"]))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "detect_world": "hpclaunch.api",
    "plan": "hpclaunch.api",
    "launch": "hpclaunch.api",
    "finish": "hpclaunch.api",
    "resolve_command": "hpclaunch.api",
    "World": "hpclaunch.world",
    "Host": "hpclaunch.world",
    "WorldOptions": "hpclaunch.adapters.base",
    "Adapter": "hpclaunch.adapters.base",
    "BaseAdapter": "hpclaunch.adapters.base",
    "Command": "hpclaunch.spawner.plan",
    "LaunchPlan": "hpclaunch.spawner.plan",
    "RankSpec": "hpclaunch.spawner.plan",
    "Outcome": "hpclaunch.spawner.report",
    "WorkerFailure": "hpclaunch.spawner.report",
    "ElasticOptions": "hpclaunch.spawner.elastic.config",
    "UsageError": "hpclaunch.errors",
    "AdapterError": "hpclaunch.errors",
}

if TYPE_CHECKING:
    from hpclaunch.adapters.base import Adapter, BaseAdapter, WorldOptions
    from hpclaunch.api import detect_world, finish, launch, plan, resolve_command
    from hpclaunch.errors import AdapterError, UsageError
    from hpclaunch.spawner.elastic.config import ElasticOptions
    from hpclaunch.spawner.plan import Command, LaunchPlan, RankSpec
    from hpclaunch.spawner.report import Outcome, WorkerFailure
    from hpclaunch.world import Host, World


def __getattr__(name: str) -> Any:
    """PEP 562: import the defining module on first use of a public name."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hpclaunch' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = [
    "Adapter",
    "AdapterError",
    "BaseAdapter",
    "Command",
    "ElasticOptions",
    "Host",
    "LaunchPlan",
    "Outcome",
    "RankSpec",
    "UsageError",
    "WorkerFailure",
    "World",
    "WorldOptions",
    "__version__",
    "detect_world",
    "finish",
    "launch",
    "plan",
    "resolve_command",
]
