"""The DeepSpeed-compatible source: ``--world_info``, ``--node_rank``, ``--master_addr/port``.

Defaults are DeepSpeed's (node_rank 0, master 127.0.0.1:29500). Every node of the job is
started with the same world_info, so the run id is derived from it: all nodes agree on it
without talking.
"""

from __future__ import annotations

import base64
from typing import Mapping, Tuple

from hpclaunch.adapters.base import BaseAdapter
from hpclaunch.errors import AdapterError, WorldInfoError
from hpclaunch.fast import sha256_hex
from hpclaunch.model.world import (
    DEFAULT_MASTER_PORT,
    MAX_WORLD_INFO_BYTES,
    Host,
    World,
    decode_world_info,
    parse_world_info_text,
    world_info_json,
)
from hpclaunch.options import WorldOptions


def read_world_info_file(path: str, validate: bool = True) -> Tuple[Host, ...]:
    """``@PATH``: the file holds the base64 or the plain JSON (for worlds beyond ARG_MAX)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_WORLD_INFO_BYTES + 1)
    except OSError as exc:
        raise WorldInfoError(
            f"cannot read world_info file {path!r} ({exc.strerror}): check the path after '@'"
        ) from None
    if len(data) > MAX_WORLD_INFO_BYTES:
        raise WorldInfoError(
            f"world_info file {path!r} is larger than {MAX_WORLD_INFO_BYTES} bytes: "
            "it must hold one world_info object"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WorldInfoError(f"world_info file {path!r} is not UTF-8 text") from None
    del data  # a big world's bytes need not outlive their text while it is parsed
    return parse_world_info_text(text, validate)


def parse_world_info_argument(value: str, validate: bool = True) -> Tuple[Host, ...]:
    """``--world_info``'s hosts; ``validate=False`` leaves their checks to the World."""
    if value.startswith("@"):
        return read_world_info_file(value[1:], validate)
    return decode_world_info(value, validate)


def derived_run_id(hosts: Tuple[Host, ...], master_addr: str, master_port: int) -> str:
    """A hash of ``encode_world_info(hosts)|master_addr|master_port``, fed in parts: a
    million-rank world's base64 is 7 MiB, and each joined copy of it would add as much."""
    payload = world_info_json(hosts, compact=True).encode()
    encoded = base64.urlsafe_b64encode(payload)  # == encode_world_info(hosts).encode()
    del payload
    digest = sha256_hex(encoded, f"|{master_addr}|{master_port}".encode())
    return f"hpclaunch-{digest[:16]}"


class ExplicitAdapter(BaseAdapter):
    """World from flags alone; the environment plays no part."""

    name = "explicit"

    def detect(self, env: Mapping[str, str]) -> bool:
        return False  # chosen only when --world_info is given (see adapters/__init__.py)

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        if options.world_info is None:
            raise AdapterError(
                "the explicit adapter needs --world_info: pass base64 of a JSON object like "
                '{"host": [0, 1]}, or @FILE'
            )
        hosts = parse_world_info_argument(options.world_info, validate=False)  # World checks
        master_addr = options.master_addr if options.master_addr is not None else "127.0.0.1"
        master_port = (
            options.master_port if options.master_port is not None else DEFAULT_MASTER_PORT
        )
        node_rank = options.node_rank if options.node_rank is not None else 0
        return World(
            hosts=hosts,
            node_rank=node_rank,
            master_addr=master_addr,
            master_port=master_port,
            run_id=derived_run_id(hosts, master_addr, master_port),
            gpu_slots=True,
        )


__all__ = ["ExplicitAdapter", "parse_world_info_argument", "read_world_info_file", "derived_run_id"]

