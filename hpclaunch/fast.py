"""Every speed trick of hpclaunch, in one place, each with the public way it stands in for.

A launcher starts on every node of every job and must start in about the time of bare
Python; a world can list a million ranks. What is measured stays in benchmarks/ (the start-up
row guards the first group; the ``--dry-run`` row of a million ranks the second). Where the
public standard library costs less than a few milliseconds more, hpclaunch uses it instead
and nothing for it is here.

Start-up, paid by every launch:

* :data:`csocket` -- the C module ``_socket`` instead of ``socket``: ``socket.py``'s enum
  conversions and its ``selectors`` import, for one hostname and at most two binds;
* :func:`sha256_hex` -- CPython's built-in SHA-256 instead of ``hashlib``, which loads
  OpenSSL (memory of every explicit-mode launcher, for one digest);
* :func:`which` and :func:`terminal_columns` -- instead of ``shutil.which`` and
  ``shutil.get_terminal_size``: ``shutil`` imports ``bz2`` and ``lzma``;
* :data:`csignal` -- the C module ``_signal`` for the signal mask and dispositions around
  each worker's fork, instead of ``signal``'s wrappers, whose enum conversions are paid
  twice per worker in the launcher and again in every child before exec (256 workers:
  milliseconds; the children's own copy is in ``spawner/child.py``, which imports no
  hpclaunch module);
* :func:`entry_points` -- reads ``entry_points.txt`` files instead of ``importlib.metadata``,
  which costs tens of milliseconds to list one group, on every launch that looks for
  plug-ins.

Big worlds, paid once per launch, by how many ranks the world has:

* :func:`plain_object_items` -- the usual world_info (plain names, lists of integers) read
  by C-level regex passes instead of ``json.loads`` building a list per host; anything else
  goes to ``json.loads`` for its exact meaning and error message;
* :func:`object_json` -- a world written once per distinct slot list instead of one
  ``json`` call per slot id;
* :func:`gc_paused` -- no cyclic GC over hundreds of thousands of acyclic containers.
"""

from __future__ import annotations

import _signal as csignal
import _socket as csocket
import contextlib
import gc
import json
import os
import re
import sys
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = [
    "csignal",
    "csocket",
    "entry_points",
    "gc_paused",
    "object_json",
    "plain_object_items",
    "sha256_hex",
    "terminal_columns",
    "which",
]


# --------------------------------------------------------------------------- start-up


def sha256_hex(*parts: bytes) -> str:
    """The SHA-256 hex digest of the concatenated ``parts`` (``hashlib`` where CPython has
    no built-in module; the digest is the same whichever runs)."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            from hashlib import sha256  # type: ignore[no-redef,unused-ignore]
    digest = sha256()
    for part in parts:
        digest.update(part)
    return str(digest.hexdigest())


def which(name: str) -> Optional[str]:
    """``shutil.which`` for a bare command name on ``$PATH``."""
    search = os.environ.get("PATH", os.defpath)
    for directory in search.split(os.pathsep) if search else ():
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else the terminal, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # no stdout, or not a terminal
        return 80


def entry_points(group: str, path: Optional[Iterable[str]] = None) -> List[Tuple[str, str, str]]:
    """``(name, "module:attr", metadata dir)`` of every entry point of ``group`` on ``path``
    (default ``sys.path``), in path order; a distribution found twice counts once (the first
    copy on the path is the one Python imports). What pip, uv and setuptools write, editable
    installs included."""
    header = f"[{group}]".encode()
    found: List[Tuple[str, str, str]] = []
    seen = set()
    for directory in _metadata_dirs(sys.path if path is None else path):
        distribution = os.path.basename(directory).split("-", 1)[0].lower().replace("_", "-")
        if distribution in seen:
            continue
        seen.add(distribution)
        try:
            with open(os.path.join(directory, "entry_points.txt"), "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if header in data:
            text = data.decode("utf-8", "replace")
            found.extend((n, t, directory) for n, t in parse_entry_points(text, group))
    return found


def parse_entry_points(text: str, group: str) -> List[Tuple[str, str]]:
    """``(name, target)`` of ``group``'s section of an ``entry_points.txt`` (INI), in order."""
    found: List[Tuple[str, str]] = []
    in_group = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            in_group = line[1:-1].strip() == group
            continue
        name, eq, value = line.partition("=")
        if in_group and eq:
            found.append((name.strip(), value.split("[", 1)[0].strip()))  # no ``[extras]``
    return found


def _metadata_dirs(path: Iterable[str]) -> Iterator[str]:
    for entry in path:
        try:
            listing = os.scandir(entry or ".")
        except OSError:  # not a directory (a zip), or gone
            continue
        with listing:
            names = sorted(e.name for e in listing if e.name.endswith((".dist-info", ".egg-info")))
        for name in names:
            yield os.path.join(entry or ".", name)


# --------------------------------------------------------------------------- big worlds

#: The shape nearly every world_info has: an object of plain names (no escapes) mapping to
#: lists of integers, JSON whitespace only. Kept as strings: ``re`` compiles (and caches)
#: them on first use, so a start that parses no world_info does not pay for them.
_WS = r"[ \t\n\r]*"
_PLAIN_NAME = r'"([^"\\\x00-\x1f]*)"' + _WS + ":" + _WS
_PLAIN_SLOTS = r"(\[[ \t\n\r0-9,\-]*\])"
_PLAIN_ITEM = _PLAIN_NAME + _PLAIN_SLOTS


def _is_object_of(item: str, text: str) -> bool:
    """Whether ``text`` is exactly a JSON object of one or more ``item``s.

    Removes every ``item`` that is followed by a comma and the next name, or by the closing
    brace, and looks at what is left: only the braces must be. (One ``fullmatch`` of a
    repeated group would keep a backtracking record per host.)
    """
    unit = item + _WS + "(?:," + _WS + '(?=")|(?=' + _WS + r"\}))"
    left = re.sub(unit, "", text)
    return re.fullmatch(_WS + r"\{" + _WS + r"\}" + _WS, left) is not None


def plain_object_items(text: str) -> Optional[Tuple[List[str], List[str]]]:
    """(names, each name's slot list as JSON text) of a plain world_info object, else None.

    Names without escapes are their own JSON value; the slot texts are left for
    ``json.loads`` to read (once per distinct text). When every host lists the same slots
    (the usual case) only the names are extracted, and every slot text is one shared string.
    """
    first = re.search(_PLAIN_ITEM, text)
    if first is None:
        return None
    same_slots = _PLAIN_NAME + re.escape(first.group(2))
    if _is_object_of(same_slots, text):
        names: List[str] = re.findall(same_slots, text)
        return names, [first.group(2)] * len(names)
    if _is_object_of(_PLAIN_ITEM, text):
        items = re.findall(_PLAIN_ITEM, text)
        return [name for name, _ in items], [slots for _, slots in items]
    return None


def object_json(names: Iterable[str], slot_column: List[Sequence[int]], compact: bool) -> str:
    """``json.dumps(dict(zip(names, slot_column)))`` (compact separators when asked), the
    same text, with each distinct slot sequence (by identity) encoded once and the names by
    json's own C escaper."""
    item_sep, key_sep = (",", ":") if compact else (", ", ": ")
    encoded = {}
    for slots in {id(slots): slots for slots in slot_column}.values():
        encoded[id(slots)] = json.dumps(list(slots), separators=(item_sep, key_sep))
    quoted = map(json.encoder.encode_basestring_ascii, names)
    texts = map(encoded.__getitem__, map(id, slot_column))
    return "{" + item_sep.join(map(("{}" + key_sep + "{}").format, quoted, texts)) + "}"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while a big world is parsed: json.loads and the Host tuples allocate
    hundreds of thousands of containers, none of them in a cycle, and the collector would
    walk the growing heap again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
