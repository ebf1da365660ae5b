"""Adapter plug-ins: entry points of the group ``hpclaunch.adapters`` (``name = "module:Class"``).

Listed by :func:`hpclaunch.fast.entry_points` (a scan of ``entry_points.txt`` files, not
``importlib.metadata``: auto-detection looks for plug-ins on every launch that would
otherwise fall back to ``local``); a plug-in's module is imported only when it is chosen or
asked to ``detect``.

A plug-in needs ``name``, ``detect`` and ``world``; without ``notes``,
``worker_environment`` or ``finish`` it gets :class:`~hpclaunch.adapters.base.BaseAdapter`'s.
One that cannot be imported, built or used is reported as one line naming it and the
package it came from (:class:`PluginError`, exit 2), never a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from hpclaunch.adapters.base import OPTIONAL_METHODS, REQUIRED_METHODS, Adapter, BaseAdapter
from hpclaunch.errors import AdapterError, UsageError
from hpclaunch.fast import entry_points
from hpclaunch.fast import parse_entry_points as parse_group
from hpclaunch.model.world import World
from hpclaunch.options import WorldOptions

GROUP = "hpclaunch.adapters"


class PluginError(AdapterError):
    """A plug-in is installed but broken: the message names it and its package."""


class PluginEntry(NamedTuple):
    """One entry point: the adapter name, ``module:attr``, and the directory it came from."""

    name: str
    target: str
    source: str

    def describe(self) -> str:
        return f"adapter plug-in {self.name!r} ({self.target}, from {self.source})"


def parse_entry_points(text: str, source: str) -> List[PluginEntry]:
    """The ``hpclaunch.adapters`` section of an ``entry_points.txt`` (INI), in file order."""
    return [PluginEntry(name, target, source) for name, target in parse_group(text, GROUP)]


def scan(path: Optional[Iterable[str]] = None) -> Dict[str, PluginEntry]:
    """Every plug-in on ``path`` (default ``sys.path``): the first of a name wins, as the first
    copy of a package on the path is the one Python imports."""
    plugins: Dict[str, PluginEntry] = {}
    for name, target, source in entry_points(GROUP, path):
        plugins.setdefault(name, PluginEntry(name, target, source))
    return plugins


def load_plugin(entry: PluginEntry) -> Adapter:
    """Import and instantiate a plug-in; any failure is one :class:`PluginError` line."""
    module_name, colon, attr = entry.target.partition(":")
    if not colon or not module_name or not attr:
        raise PluginError(
            f"{entry.describe()} is broken: the entry point must read 'module:Class'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        adapter = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        raise PluginError(
            f"{entry.describe()} cannot be loaded ({type(exc).__name__}: {exc}): fix or "
            "uninstall that package"
        ) from None
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(adapter, m, None))]
    missing += [m for m in OPTIONAL_METHODS
                if hasattr(adapter, m) and not callable(getattr(adapter, m))]
    if missing or getattr(adapter, "name", None) != entry.name:
        why = (
            f"it lacks {', '.join(m + '()' for m in missing)}"
            if missing
            else f"its name is {getattr(adapter, 'name', None)!r}, not {entry.name!r}"
        )
        raise PluginError(
            f"{entry.describe()} is broken: {why} (see the Adapter protocol in docs/api.md: "
            "name, detect() and world() are required)"
        )
    return GuardedPlugin(adapter, entry)


class GuardedPlugin:
    """A plug-in whose every call turns an unexpected exception into one line naming it.

    A :class:`~hpclaunch.errors.UsageError` passes through unchanged: that is how an adapter
    says what is wrong with the user's environment.
    """

    def __init__(self, adapter: Adapter, entry: PluginEntry) -> None:
        self.adapter = adapter
        self.entry = entry
        self.name = entry.name
        self.defaults = BaseAdapter()

    def _call(self, method: str, *args: Any, then: Callable[[Any], Any] = lambda r: r) -> Any:
        """``then(adapter.<method>(*args))`` (BaseAdapter's when the plug-in has none); an
        unexpected exception in either (a result of the wrong shape included) becomes one
        line naming the plug-in."""
        implementation = getattr(self.adapter, method, None) or getattr(self.defaults, method)
        try:
            return then(implementation(*args))
        except UsageError:
            raise
        except Exception as exc:
            raise self._fail(method, exc) from None

    def _fail(self, method: str, exc: Exception) -> PluginError:
        return PluginError(
            f"{self.entry.describe()} failed in {method}() ({type(exc).__name__}: {exc}): "
            "report it to the plug-in's authors, or pass another --adapter"
        )

    def detect(self, env: Mapping[str, str]) -> bool:
        return bool(self._call("detect", env))

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        world = self._call("world", env, options)
        if not isinstance(world, World):
            raise self._fail("world", TypeError(f"returned {type(world).__name__}, not a World"))
        return world

    def notes(self) -> Tuple[str, ...]:
        return tuple(self._call("notes", then=lambda notes: tuple(map(str, notes))))

    def worker_environment(self, env: Mapping[str, str]) -> Dict[str, str]:
        return dict(self._call("worker_environment", env, then=dict))

    def finish(self, exit_code: int) -> None:
        self._call("finish", exit_code)
