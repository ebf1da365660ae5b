"""World: rank arithmetic and world_info encoding, checked as properties."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.errors import WorldInfoError
from hpclaunch.world import (
    Host,
    World,
    decode_world_info,
    encode_world_info,
    parse_world_info_text,
)

host_names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda name: name == name.strip())
slot_lists = st.lists(st.integers(0, 4096), min_size=1, max_size=9, unique=True)
host_tuples = st.dictionaries(host_names, slot_lists, min_size=1, max_size=12).map(
    lambda d: tuple(Host(k, tuple(v)) for k, v in d.items())
)


def make_world(hosts: tuple[Host, ...], node_rank: int = 0) -> World:
    return World(
        hosts=hosts, node_rank=node_rank, master_addr="10.0.0.1", master_port=29500, run_id="r"
    )


@given(host_tuples)
def test_world_info_round_trips_in_order(hosts: tuple[Host, ...]) -> None:
    assert decode_world_info(encode_world_info(hosts)) == hosts


@given(host_tuples)
def test_plain_json_and_standard_base64_decode_the_same(hosts: tuple[Host, ...]) -> None:
    text = json.dumps({h.name: list(h.slots) for h in hosts})
    assert parse_world_info_text(text) == hosts
    std = base64.b64encode(text.encode()).decode().rstrip("=")
    assert decode_world_info(std) == hosts


@given(host_tuples, st.data())
def test_ranks_partition_the_world_consecutively(
    hosts: tuple[Host, ...], data: st.DataObject
) -> None:
    worlds = [make_world(hosts, n) for n in range(len(hosts))]
    all_ranks = [r for w in worlds for r in w.global_ranks()]
    assert all_ranks == list(range(worlds[0].world_size))
    node = data.draw(st.integers(0, len(hosts) - 1))
    world = worlds[node]
    assert len(world.global_ranks()) == len(hosts[node].slots) == world.local_world_size


def test_heterogeneous_local_ranks_fix_deepspeeds_modulo_bug() -> None:
    world = make_world((Host("a", (0, 1, 2)), Host("b", (0, 1, 2, 3))), node_rank=1)
    assert list(world.global_ranks()) == [3, 4, 5, 6]
    assert world.world_size == 7


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ("[]", "JSON object"),
        ('"host"', "JSON object"),
        ("{}", "no hosts"),
        ('{"a": []}', "no slots"),
        ('{"a": [0, 0]}', "twice"),
        ('{"a": [0], "a": [1]}', "twice"),
        ('{"a": ["0"]}', "integers"),
        ('{"a": [1.5]}', "integers"),
        ('{"a": [true]}', "integers"),
        ('{"a": [-1]}', "integers"),
        ('{"a": 3}', "list of slot ids"),
        ('{"": [0]}', "empty"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_world_info_names_the_problem(payload: str, fragment: str) -> None:
    encoded = base64.urlsafe_b64encode(payload.encode()).decode()
    with pytest.raises(WorldInfoError, match=fragment):
        decode_world_info(encoded)


@pytest.mark.parametrize("value", ["!!!!", "abc$", "\x00", "   "])
def test_bad_base64_is_a_world_info_error(value: str) -> None:
    with pytest.raises(WorldInfoError):
        decode_world_info(value)


@pytest.mark.parametrize("node_rank", [-1, 2, 100])
def test_node_rank_out_of_range(node_rank: int) -> None:
    with pytest.raises(WorldInfoError, match="node_rank"):
        make_world((Host("a", (0,)), Host("b", (0,))), node_rank)


@pytest.mark.parametrize("port", [0, -5, 65536, True])
def test_bad_port(port: int) -> None:
    with pytest.raises(WorldInfoError, match="master_port"):
        World((Host("a", (0,)),), 0, "x", port, "r")
