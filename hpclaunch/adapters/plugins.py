"""Adapter plug-ins: entry points of the group ``hpclaunch.adapters`` (``name = "module:Class"``).

Found by reading the ``entry_points.txt`` of each ``*.dist-info``/``*.egg-info`` directory on
``sys.path`` (what pip, uv and setuptools write, editable installs included), not through
``importlib.metadata``: importing it and asking for one group costs ~52 ms of CPU with 52
packages installed, this scan ~2 ms (measured on the development VM, with and without a
plug-in installed), and auto-detection must look for plug-ins on every launch that would
otherwise fall back to ``local``. Only the listing
is cheap: a plug-in's module is imported when it is chosen or asked to ``detect``.

A plug-in that cannot be imported, built or used is reported as one line naming it and
the package it came from (:class:`PluginError`, exit 2), never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from hpclaunch.adapters.base import PROTOCOL_METHODS, Adapter, WorldOptions
from hpclaunch.errors import AdapterError, UsageError
from hpclaunch.world import World

GROUP = "hpclaunch.adapters"
_HEADER = f"[{GROUP}]".encode()


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
    found: List[PluginEntry] = []
    in_group = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            in_group = line[1:-1].strip() == GROUP
            continue
        name, eq, value = line.partition("=")
        if in_group and eq:
            target = value.split("[", 1)[0].strip()  # drop an ``[extras]`` suffix
            found.append(PluginEntry(name.strip(), target, source))
    return found


def _metadata_dirs(path: Iterable[str]) -> Iterable[str]:
    for entry in path:
        try:
            listing = os.scandir(entry or ".")
        except OSError:  # not a directory (a zip), or gone
            continue
        with listing:
            names = sorted(e.name for e in listing if e.name.endswith((".dist-info", ".egg-info")))
        for name in names:
            yield os.path.join(entry or ".", name)


def _distribution(directory: str) -> str:
    """``Foo_Bar-1.0.dist-info`` -> ``foo-bar``: a package found twice on the path counts once."""
    return os.path.basename(directory).split("-", 1)[0].lower().replace("_", "-")


def scan(path: Optional[Iterable[str]] = None) -> Dict[str, PluginEntry]:
    """Every plug-in on ``path`` (default ``sys.path``): the first of a name wins, as the first
    copy of a package on the path is the one Python imports."""
    plugins: Dict[str, PluginEntry] = {}
    seen = set()
    for directory in _metadata_dirs(sys.path if path is None else path):
        distribution = _distribution(directory)
        if distribution in seen:
            continue
        seen.add(distribution)
        try:
            with open(os.path.join(directory, "entry_points.txt"), "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if _HEADER not in data:
            continue
        for entry in parse_entry_points(data.decode("utf-8", "replace"), directory):
            plugins.setdefault(entry.name, entry)
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
    missing = [m for m in PROTOCOL_METHODS if not callable(getattr(adapter, m, None))]
    if missing or getattr(adapter, "name", None) != entry.name:
        why = (
            f"it lacks {', '.join(m + '()' for m in missing)}"
            if missing
            else f"its name is {getattr(adapter, 'name', None)!r}, not {entry.name!r}"
        )
        raise PluginError(
            f"{entry.describe()} is broken: {why} (see the Adapter protocol in docs/api.md; "
            "subclassing hpclaunch.adapters.base.BaseAdapter supplies the defaults)"
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

    def _call(self, method: str, *args: Any, then: Callable[[Any], Any] = lambda r: r) -> Any:
        """``then(adapter.<method>(*args))``; an unexpected exception in either (a result of
        the wrong shape included) becomes one line naming the plug-in."""
        try:
            return then(getattr(self.adapter, method)(*args))
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
