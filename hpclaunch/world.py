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
import json
from typing import Dict, List, Mapping, NamedTuple, Sequence, Tuple

from hpclaunch.errors import WorldInfoError

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


class World(_WorldFields):
    """An immutable world: ordered hosts, this node's index, and the rendezvous address.

    ``gpu_slots`` says whether slot ids are GPU ids (then workers get ``CUDA_VISIBLE_DEVICES``)
    or merely process slots (CPU-only worlds). ``run_id`` is shared by every node of the job.
    Validated when built, so no adapter can hand the spawner an impossible world. (A
    NamedTuple rather than a frozen dataclass: ``dataclasses`` imports ``inspect``, which
    alone was half of the launcher's import time.)
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
    ) -> World:
        self = super().__new__(cls, hosts, node_rank, master_addr, master_port, run_id, gpu_slots)
        self._validate()
        return self

    def _validate(self) -> None:
        validate_hosts(self.hosts)
        if not 0 <= self.node_rank < len(self.hosts):
            raise WorldInfoError(
                f"node_rank {self.node_rank} is out of range: the world has {len(self.hosts)} "
                f"node(s), so use --node_rank 0..{len(self.hosts) - 1}"
            )
        validate_port(self.master_port)
        if not self.master_addr or any(c.isspace() for c in self.master_addr):
            raise WorldInfoError(
                f"master_addr {self.master_addr!r} is not a host name or address; "
                "pass --master_addr with the address of the node with rank 0"
            )

    @property
    def num_nodes(self) -> int:
        return len(self.hosts)

    @property
    def world_size(self) -> int:
        return sum(len(h.slots) for h in self.hosts)

    @property
    def this_host(self) -> Host:
        return self.hosts[self.node_rank]

    @property
    def local_world_size(self) -> int:
        return len(self.this_host.slots)

    def rank_offset(self, node_rank: int) -> int:
        """Global rank of local rank 0 on host ``node_rank`` (prefix sum of slot counts)."""
        return sum(len(h.slots) for h in self.hosts[:node_rank])

    def global_ranks(self) -> range:
        """The global ranks of this node's workers, in local-rank order."""
        start = self.rank_offset(self.node_rank)
        return range(start, start + self.local_world_size)

    def world_info(self) -> Dict[str, List[int]]:
        """The DeepSpeed world_info mapping, in node order."""
        return {h.name: list(h.slots) for h in self.hosts}


def is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts '¹', which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def validate_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise WorldInfoError(f"master_port {port!r} is out of range: use a TCP port 1..65535")


def validate_hosts(hosts: Sequence[Host]) -> None:
    """Check the shape every source must satisfy; messages name the offending host."""
    if not hosts:
        raise WorldInfoError("the world has no hosts: world_info must name at least one host")
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
    hosts = tuple(Host(str(name), tuple(slots)) for name, slots in mapping.items())
    validate_hosts(hosts)
    return hosts


def encode_world_info(hosts: Sequence[Host]) -> str:
    """DeepSpeed's encoding: urlsafe base64 of the JSON object, insertion order = node order."""
    payload = json.dumps({h.name: list(h.slots) for h in hosts}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


def _reject_duplicate_keys(pairs: List[Tuple[str, object]]) -> Dict[str, object]:
    result: Dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise WorldInfoError(f"world_info lists host {key!r} twice: list each host once")
        result[key] = value
    return result


def parse_world_info_json(text: str) -> Tuple[Host, ...]:
    """Parse the JSON form. Keeps the object's order; refuses duplicate hosts."""
    try:
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
    for name, slots in obj.items():
        if not isinstance(slots, list):
            raise WorldInfoError(
                f"world_info host {name!r} maps to {slots!r}: it must map to a list of slot ids"
            )
    return hosts_from_mapping(obj)


def decode_world_info(value: str) -> Tuple[Host, ...]:
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
    return parse_world_info_json(text)


def parse_world_info_text(text: str) -> Tuple[Host, ...]:
    """Plain JSON (starts with ``{``) or base64, as either may sit in an ``@FILE``."""
    stripped = text.strip()
    if stripped.startswith("{") or stripped.startswith("["):
        return parse_world_info_json(stripped)
    return decode_world_info(stripped)
