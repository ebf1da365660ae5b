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

#: typing.TYPE_CHECKING without importing typing: every launch imports this package before
#: its entry point's first line holds the signals (hpclaunch.hold), so it stays minimal.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.2.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "detect_world": "hpclaunch.api",
    "plan": "hpclaunch.api",
    "launch": "hpclaunch.api",
    "finish": "hpclaunch.api",
    "resolve_command": "hpclaunch.api",
    "World": "hpclaunch.model.world",
    "Host": "hpclaunch.model.world",
    "WorldOptions": "hpclaunch.options",
    "OutputOptions": "hpclaunch.options",
    "LaunchOptions": "hpclaunch.options",
    "ElasticOptions": "hpclaunch.options",
    "Adapter": "hpclaunch.adapters.base",
    "BaseAdapter": "hpclaunch.adapters.base",
    "Command": "hpclaunch.model.plan",
    "LaunchPlan": "hpclaunch.model.plan",
    "RankSpec": "hpclaunch.model.plan",
    "Outcome": "hpclaunch.spawner.report",
    "WorkerFailure": "hpclaunch.spawner.report",
    "Reporter": "hpclaunch.reporter",
    "UsageError": "hpclaunch.errors",
    "AdapterError": "hpclaunch.errors",
}

if TYPE_CHECKING:
    from hpclaunch.adapters.base import Adapter, BaseAdapter
    from hpclaunch.api import detect_world, finish, launch, plan, resolve_command
    from hpclaunch.errors import AdapterError, UsageError
    from hpclaunch.model.plan import Command, LaunchPlan, RankSpec
    from hpclaunch.model.world import Host, World
    from hpclaunch.options import ElasticOptions, LaunchOptions, OutputOptions, WorldOptions
    from hpclaunch.reporter import Reporter
    from hpclaunch.spawner.report import Outcome, WorkerFailure


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
    "LaunchOptions",
    "LaunchPlan",
    "Outcome",
    "OutputOptions",
    "RankSpec",
    "Reporter",
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
