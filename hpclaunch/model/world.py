"""The one description of a job's world that every adapter produces and the spawner consumes.

A :class:`World` is the DeepSpeed ``world_info`` (ordered hosts, each with its slot ids) plus
which of those hosts *this* launcher is, and where rank 0 listens. It is frozen and does no
I/O, so rank arithmetic and world_info parsing can be checked exhaustively with hypothesis.

Ranks are consecutive over hosts in world_info order; a worker's local rank is its index on
its own host. Global rank offsets are prefix sums of the slot counts, which is what makes
heterogeneous hosts (``{"a": [0, 1, 2], "b": [0, 1, 2, 3]}``) come out right: DeepSpeed's
``rank % local_count`` does not.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import operator
import re
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

from hpclaunch.errors import WorldInfoError
from hpclaunch.fast import gc_paused, object_json, plain_object_items

#: Largest ``@FILE`` world_info accepted. 16,384 hosts x 8 GPUs is ~0.5 MiB of JSON; this
#: leaves room for far bigger worlds while refusing to slurp an arbitrary file into memory.
MAX_WORLD_INFO_BYTES = 64 * 1024 * 1024

DEFAULT_MASTER_PORT = 29500


class Host(NamedTuple):
    """One node of the world: its name as the world lists it, and its slot (GPU) ids."""

    name: str
    slots: Tuple[int, ...]


class _WorldFields(NamedTuple):
    hosts: Tuple[Host, ...]
    node_rank: int
    master_addr: str
    master_port: int
    run_id: str
    gpu_slots: bool = True
    #: The adapter that built this World (its ``--adapter`` name); ``"api"`` for one built by
    #: hand. The plan names it, and the launch asks that adapter for the workers' environment.
    source: str = "api"
    #: Derived in ``World.__new__`` (never passed): the sum of all slot counts.
    world_size: int = 0
    #: Derived: the global rank of this node's local rank 0 (prefix sum of slot counts).
    first_rank: int = 0


#: The fields a World is built from; ``world_size`` and ``first_rank`` follow from them.
GIVEN_FIELDS = 7


class World(_WorldFields):
    """An immutable world: ordered hosts, this node's index, and the rendezvous address.

    ``gpu_slots`` says whether slot ids are GPU ids (then workers get ``CUDA_VISIBLE_DEVICES``)
    or merely process slots (CPU-only worlds). ``run_id`` is shared by every node of the job.
    Validated when built (``_replace`` and ``_make`` included), so no adapter can hand the
    spawner an impossible world. (A
    NamedTuple rather than a frozen dataclass: ``dataclasses`` imports ``inspect``, which
    alone was half of the launcher's import time.) ``world_size`` and ``first_rank`` are
    computed once here: every worker's env needs them, and summing 131,072 hosts' slot
    counts per variable per worker was most of a big dry-run's time.
    """

    __slots__ = ()

    def __new__(
        cls,
        hosts: Tuple[Host, ...],
        node_rank: int,
        master_addr: str,
        master_port: int,
        run_id: str,
        gpu_slots: bool = True,
        source: str = "api",
    ) -> World:
        _validate_world(hosts, node_rank, master_addr, master_port)
        world_size = sum(map(len, map(_SLOTS, hosts)))
        first_rank = sum(map(len, map(_SLOTS, itertools.islice(hosts, node_rank))))
        return super().__new__(
            cls, hosts, node_rank, master_addr, master_port, run_id, gpu_slots, source,
            world_size, first_rank,
        )

    def __getnewargs__(self) -> Tuple[Any, ...]:
        """Pickle and copy rebuild a World from its given fields; the derived ones follow."""
        return tuple(self)[:GIVEN_FIELDS]

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> World:  # type: ignore[override]
        """A World from its given fields (any derived ones after them are recomputed), checked
        like every other: NamedTuple's own ``_make`` would skip ``__new__``."""
        return cls(*tuple(iterable)[:GIVEN_FIELDS])

    def _replace(self, **changes: Any) -> World:
        """A new World with ``changes``, validated and with its derived fields recomputed
        (NamedTuple's own ``_replace`` would keep a stale ``world_size``)."""
        derived = sorted(set(changes) & {"world_size", "first_rank"})
        if derived:
            raise TypeError(f"World's {', '.join(derived)} follows from its hosts: replace those")
        given: Dict[str, Any] = dict(zip(self._fields[:GIVEN_FIELDS], self))
        unknown = sorted(set(changes) - set(given))
        if unknown:
            raise TypeError(f"World has no field(s) {', '.join(unknown)}")
        given.update(changes)
        return World(**given)

    def from_source(self, source: str) -> World:
        """This World as built by adapter ``source``: only that name changes, so nothing
        that was validated is checked again (a million hosts' checks are not free)."""
        if source == self.source:
            return self
        fields = list(self)
        fields[self._fields.index("source")] = source
        return tuple.__new__(World, fields)

    @property
    def num_nodes(self) -> int:
        return len(self.hosts)

    @property
    def this_host(self) -> Host:
        return self.hosts[self.node_rank]

    @property
    def local_world_size(self) -> int:
        return len(self.this_host.slots)

    def rank_offset(self, node_rank: int) -> int:
        """Global rank of local rank 0 on host ``node_rank`` (prefix sum of slot counts)."""
        if node_rank == self.node_rank:
            return self.first_rank
        return sum(map(len, map(_SLOTS, itertools.islice(self.hosts, node_rank))))

    def global_ranks(self) -> range:
        """The global ranks of this node's workers, in local-rank order."""
        return range(self.first_rank, self.first_rank + self.local_world_size)

    def world_info(self) -> Dict[str, List[int]]:
        """The DeepSpeed world_info mapping, in node order."""
        return {h.name: list(h.slots) for h in self.hosts}

    def slot_map(self) -> Dict[str, Tuple[int, ...]]:
        """world_info with tuples: what ``json.dumps`` writes identically, built in C (a
        Host is a ``(name, slots)`` pair) and sharing the hosts' slot tuples."""
        return dict(self.hosts)


#: ``Host.name`` and ``Host.slots`` as C-level getters, for ``map`` over many hosts.
_NAME = operator.itemgetter(0)
_SLOTS = operator.itemgetter(1)


def _validate_world(
    hosts: Tuple[Host, ...], node_rank: int, master_addr: str, master_port: int
) -> None:
    validate_hosts(hosts)
    if not 0 <= node_rank < len(hosts):
        raise WorldInfoError(
            f"node_rank {node_rank} is out of range: the world has {len(hosts)} "
            f"node(s), so use --node_rank 0..{len(hosts) - 1}"
        )
    validate_port(master_port)
    if not master_addr or any(c.isspace() for c in master_addr):
        raise WorldInfoError(
            f"master_addr {master_addr!r} is not a host name or address; "
            "pass --master_addr with the address of the node with rank 0"
        )


def is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts '¹', which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def validate_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise WorldInfoError(f"master_port {port!r} is out of range: use a TCP port 1..65535")


def validate_hosts(hosts: Sequence[Host]) -> None:
    """Check the shape every source must satisfy; messages name the offending host.

    A million-rank world is checked with a handful of C-level passes
    (:func:`_hosts_look_valid`); only when those find something wrong does the per-host loop
    run, to name the first offending host exactly as it always has.
    """
    if not hosts:
        raise WorldInfoError("the world has no hosts: world_info must name at least one host")
    if not _hosts_look_valid(hosts):
        _explain_invalid_hosts(hosts)


def _hosts_look_valid(hosts: Sequence[Host]) -> bool:
    """True only if every check of :func:`_explain_invalid_hosts` passes; may say False for
    a valid world of unusual types (int subclasses, list slots): the slow path decides."""
    names = list(map(_NAME, hosts))
    if set(map(type, names)) != {str}:
        return False
    unique = set(names)
    if len(unique) != len(names) or "" in unique:
        return False
    if any(map(operator.ne, names, map(str.strip, names))):  # spaces around a name
        return False
    try:
        distinct_slots = set(map(_SLOTS, hosts))  # usually one tuple shared by every host
    except TypeError:  # unhashable slot ids: let the slow path name them
        return False
    for slots in distinct_slots:
        if type(slots) is not tuple or not slots or set(map(type, slots)) != {int}:
            return False
        if min(slots) < 0 or len(set(slots)) != len(slots):
            return False
    return True


def _explain_invalid_hosts(hosts: Sequence[Host]) -> None:
    seen = set()
    for host in hosts:
        if not isinstance(host.name, str) or not host.name or host.name != host.name.strip():
            raise WorldInfoError(
                f"host name {host.name!r} is empty or has surrounding spaces: name each host"
            )
        if host.name in seen:
            raise WorldInfoError(f"host {host.name!r} is listed twice: list each host once")
        seen.add(host.name)
        if not host.slots:
            raise WorldInfoError(
                f"host {host.name!r} has no slots: give it at least one slot id, e.g. [0]"
            )
        for slot in host.slots:
            if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
                raise WorldInfoError(
                    f"host {host.name!r} has slot id {slot!r}: slot ids must be integers >= 0"
                )
        if len(set(host.slots)) != len(host.slots):
            raise WorldInfoError(
                f"host {host.name!r} lists a slot id twice ({list(host.slots)}): list each once"
            )


def hosts_from_mapping(mapping: Mapping[str, Sequence[int]]) -> Tuple[Host, ...]:
    """Hosts in the mapping's order; checked by :class:`World` when one is built from them.

    Equal slot lists become one shared tuple (8 GPUs per node is one tuple, not 131,072),
    and each Host is made by ``tuple.__new__`` in C (what a NamedTuple's ``__new__`` does in
    Python): together a third of a million-rank dry-run's memory and most of its parse time.
    """
    slot_tuples = list(map(tuple, mapping.values()))
    shared: Dict[Tuple[int, ...], Tuple[int, ...]] = {}
    try:
        slot_tuples = list(map(shared.setdefault, slot_tuples, slot_tuples))
    except TypeError:  # unhashable slot ids (nested lists): World's validation names them
        pass
    pairs = zip(map(str, mapping.keys()), slot_tuples)
    return tuple(map(tuple.__new__, itertools.repeat(Host), pairs))


def encode_world_info(hosts: Sequence[Host]) -> str:
    """DeepSpeed's encoding: urlsafe base64 of the JSON object, insertion order = node order."""
    payload = world_info_json(hosts, compact=True)
    return base64.urlsafe_b64encode(payload.encode()).decode()


def world_info_json(pairs: Sequence[Tuple[str, Sequence[int]]], compact: bool = False) -> str:
    """``json.dumps(dict(pairs))`` (``separators=(",", ":")`` when ``compact``), the same text.

    Hosts share a few slot tuples (:func:`hosts_from_mapping`), so each distinct tuple is
    encoded once and the names by json's own C escaper: a million-rank world is written in a
    few C-level passes instead of json's one call per slot id, which took 0.3 s per copy.
    """
    return object_json(map(_NAME, pairs), list(map(_SLOTS, pairs)), compact)


def _reject_duplicate_keys(pairs: List[Tuple[str, object]]) -> Dict[str, object]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise WorldInfoError(f"world_info lists host {key!r} twice: list each host once")
        seen.add(key)
    raise AssertionError("unreachable: a shorter dict means a repeated key")


def _parse_plain_world_info(text: str, validate: bool) -> Optional[Tuple[Host, ...]]:
    """The hosts of a plain world_info (:func:`hpclaunch.fast.plain_object_items`), or None
    to let :func:`json.loads` decide.

    Gives exactly what the general path gives, or None: each distinct slot list is read by
    ``json.loads`` itself, and a world that is not valid (a repeated name, a bad slot) goes
    the general way for its message when ``validate`` asks for the parser's checks.
    """
    with gc_paused():
        items = plain_object_items(text)
        if items is None:
            return None
        names, slot_texts = items
        try:
            parsed = {t: tuple(json.loads(t)) for t in set(slot_texts)}
        except ValueError:
            return None
        pairs = zip(names, map(parsed.__getitem__, slot_texts))
        hosts = tuple(map(tuple.__new__, itertools.repeat(Host), pairs))
    return hosts if not validate or _hosts_look_valid(hosts) else None


def parse_world_info_json(text: str, validate: bool = True) -> Tuple[Host, ...]:
    """Parse the JSON form. Keeps the object's order; refuses duplicate hosts.

    ``validate=False`` leaves the hosts' checks to the :class:`World` built from them (the
    explicit adapter's way: a million-host world is then checked once, not twice).
    """
    plain = _parse_plain_world_info(text, validate)
    if plain is not None:
        return plain
    try:
        with gc_paused():
            obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except WorldInfoError:
        raise
    except (ValueError, RecursionError) as exc:
        raise WorldInfoError(
            f"world_info is not valid JSON ({exc}): pass base64 of a JSON object like "
            '{"host": [0, 1]}'
        ) from None
    if not isinstance(obj, dict):
        raise WorldInfoError(
            f"world_info must be a JSON object mapping host to slot ids, got {type(obj).__name__}"
        )
    if set(map(type, obj.values())) != {list}:
        for name, slots in obj.items():
            if not isinstance(slots, list):
                raise WorldInfoError(
                    f"world_info host {name!r} maps to {slots!r}: it must map to a list of "
                    "slot ids"
                )
    with gc_paused():
        hosts = hosts_from_mapping(obj)
    if validate:
        validate_hosts(hosts)
    return hosts


def decode_world_info(value: str, validate: bool = True) -> Tuple[Host, ...]:
    """Decode the base64 form (standard or urlsafe alphabet, padding optional)."""
    compact = "".join(value.split())
    if not compact:
        raise WorldInfoError(
            'world_info is empty: pass base64 of a JSON object like {"host": [0]}'
        )
    padded = compact + "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise WorldInfoError(
            f"world_info is not valid base64 (starts {compact[:24]!r}): pass "
            "base64 of the JSON, or @FILE naming a file that holds it"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WorldInfoError(
            "world_info decodes to bytes that are not UTF-8 JSON: pass base64 of a JSON object"
        ) from None
    return parse_world_info_json(text, validate)


def parse_world_info_text(text: str, validate: bool = True) -> Tuple[Host, ...]:
    """Plain JSON (starts with ``{``) or base64, as either may sit in an ``@FILE``."""
    if not re.match(r"\s*[{\[]", text):
        return decode_world_info(text, validate)
    return parse_world_info_json(_without_foreign_space(text), validate)


def _without_foreign_space(text: str) -> str:
    """``text`` itself when the whitespace around it is JSON's own (space, tab, CR, LF: what
    json.loads skips), else ``text.strip()``. Same JSON either way, but a 5 MiB world is not
    copied for the newline at the end of its file."""
    lead_match = re.match(r"\s*", text)
    lead = lead_match.group() if lead_match else ""
    tail = text[-256:]
    kept = tail.rstrip()
    if not kept or not set(lead + tail[len(kept):]) <= set(" \t\n\r"):
        return text.strip()
    return text

