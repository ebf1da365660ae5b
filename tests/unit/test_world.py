"""World: rank arithmetic and world_info encoding, checked as properties."""

from __future__ import annotations

import base64
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.errors import WorldInfoError
from hpclaunch.model.plan import Command, build_plan, plan_json, write_plan
from hpclaunch.model.world import (
    Host,
    World,
    decode_world_info,
    encode_world_info,
    parse_world_info_text,
    world_info_json,
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


# -- big worlds: the fast paths must give exactly what the general ones give ------------------

json_space = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])


@given(host_tuples, json_space, json_space)
def test_plain_fast_path_agrees_with_json(hosts: tuple[Host, ...], a: str, b: str) -> None:
    """Any spacing JSON allows, names with or without escapes: the same hosts as json.loads."""
    body = f",{a}".join(
        f"{json.dumps(h.name)}{b}:{a}[{f',{b}'.join(map(str, h.slots))}]" for h in hosts
    )
    text = f"{a}{{{b}{body}{a}}}{b}"
    expected = tuple(Host(k, tuple(v)) for k, v in json.loads(text).items())
    assert parse_world_info_text(text) == expected == hosts


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"a": [0], "a": [1]}', "world_info lists host 'a' twice"),  # the JSON path's words
        ('{"a": [0],}', "not valid JSON"),
        ('{"a": [0] "b": [1]}', "not valid JSON"),
        ('{"a": [01]}', "not valid JSON"),
        ('{"a": [0]}{"b": [0]}', "not valid JSON"),
        ('{"a": [1, 1]}', "twice"),
        ('{"a": [-1]}', "integers"),
        ('{" a": [0]}', "surrounding spaces"),
        ('{"a":\u00a0[0]}', "not valid JSON"),  # no-break space is not JSON whitespace
    ],
)
def test_plain_looking_bad_worlds_get_the_general_message(text: str, fragment: str) -> None:
    with pytest.raises(WorldInfoError, match=fragment):
        parse_world_info_text(text)


def test_equal_slot_lists_share_one_tuple() -> None:
    text = json.dumps({f"n{i}": list(range(8)) for i in range(1000)})
    hosts = parse_world_info_text(text)
    assert len(hosts) == 1000 and len({id(h.slots) for h in hosts}) == 1
    mixed = parse_world_info_text(json.dumps({"a": [0, 1], "b": [2], "c": [0, 1]}))
    assert mixed == (Host("a", (0, 1)), Host("b", (2,)), Host("c", (0, 1)))
    assert mixed[0].slots is mixed[2].slots


@given(host_tuples, st.booleans())
def test_world_info_json_is_json_dumps(hosts: tuple[Host, ...], compact: bool) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    expected = json.dumps({h.name: list(h.slots) for h in hosts}, separators=separators)
    assert world_info_json(hosts, compact=compact) == expected


def test_dry_run_text_is_json_dumps_of_the_plan() -> None:
    hosts = tuple(Host(f"node{i}\u00e9", (0, 1) if i % 3 else (5,)) for i in range(40000))
    world = make_world(hosts, node_rank=39999)
    shown = build_plan("explicit", world, Command("/bin/true", mode="exec")).to_json()
    stream = io.StringIO()
    write_plan(shown, stream)
    assert stream.getvalue() == json.dumps(shown) + "\n"
    assert plan_json(shown) == json.dumps(shown)


def test_dry_run_is_one_write() -> None:
    """Under mpirun every node prints its plan into one stream: one write each, or the
    nodes' pieces interleave into invalid JSON (seen with MPICH and an unbuffered stdout)."""

    class Writes(io.StringIO):
        count = 0

        def write(self, text: str) -> int:
            self.count += 1
            return super().write(text)

    hosts = tuple(Host(f"node{i}", (0, 1)) for i in range(3))
    shown = build_plan("explicit", make_world(hosts, 1), Command("/bin/true", mode="exec"))
    stream = Writes()
    write_plan(shown.to_json(), stream)
    assert stream.count == 1
    assert json.loads(stream.getvalue())["node_rank"] == 1


@given(host_tuples, st.data())
def test_cached_sizes_are_the_sums(hosts: tuple[Host, ...], data: st.DataObject) -> None:
    node = data.draw(st.integers(0, len(hosts) - 1))
    world = make_world(hosts, node)
    sizes = [len(h.slots) for h in hosts]
    assert world.world_size == sum(sizes)
    assert world.first_rank == sum(sizes[:node]) == world.rank_offset(node)
    assert [world.rank_offset(n) for n in range(len(hosts))] == [
        sum(sizes[:n]) for n in range(len(hosts))
    ]


@pytest.mark.parametrize(
    "hosts, fragment",
    [
        ((Host("a", (0,)), Host("a", (1,))), "listed twice"),
        ((Host("a ", (0,)),), "surrounding spaces"),
        ((Host("a", ()),), "no slots"),
        ((Host("a", (True,)),), "integers"),
        ((Host("a", [0, 0]),), "twice"),  # type: ignore[arg-type]
        ((Host("a", ([0],)),), "integers"),  # type: ignore[arg-type]
    ],
)
def test_world_refuses_what_the_fast_checks_reject(
    hosts: tuple[Host, ...], fragment: str
) -> None:
    with pytest.raises(WorldInfoError, match=fragment):
        make_world(hosts)


def test_world_accepts_list_slots_and_int_subclasses() -> None:
    """Unusual but valid types fail the fast checks and pass the exact ones."""

    class Slot(int):
        pass

    world = make_world((Host("a", [0, 1]), Host("b", (Slot(3),))))  # type: ignore[arg-type]
    assert world.world_size == 3


@pytest.mark.parametrize("wrap", ["", "\n", " \r\n\t", "\u00a0", "\n\u2003"])
def test_any_surrounding_whitespace_is_ignored(wrap: str) -> None:
    """A file's final newline, or a no-break space that json.loads alone would refuse."""
    text = wrap + '{"a": [0, 1], "b": [0, 1]}' + wrap
    assert parse_world_info_text(text) == (Host("a", (0, 1)), Host("b", (0, 1)))


def test_world_survives_pickle_and_copy() -> None:
    import copy
    import pickle

    world = make_world((Host("a", (0, 1)), Host("b", (0,))), node_rank=1)
    assert pickle.loads(pickle.dumps(world)) == world == copy.deepcopy(world)
    assert copy.copy(world).first_rank == 2


# -- World keeps its promise: every way to make one checks it ----------------------------


def two_node_world() -> World:
    return World((Host("a", (0, 1)), Host("b", (0, 1, 2))), 0, "10.0.0.1", 29500, "r")


def test_replace_checks_like_the_constructor() -> None:
    world = two_node_world()
    with pytest.raises(WorldInfoError, match="node_rank 7 is out of range"):
        world._replace(node_rank=7)
    with pytest.raises(WorldInfoError, match="master_port"):
        world._replace(master_port=0)
    with pytest.raises(WorldInfoError, match="listed twice"):
        world._replace(hosts=(Host("a", (0,)), Host("a", (1,))))


def test_replace_recomputes_what_follows_from_the_hosts() -> None:
    world = two_node_world()._replace(node_rank=1)
    assert (world.world_size, world.first_rank) == (5, 2)
    bigger = world._replace(hosts=(Host("a", (0,)), Host("b", tuple(range(8)))))
    assert (bigger.world_size, bigger.first_rank, list(bigger.global_ranks())) == (
        9, 1, list(range(1, 9)))
    with pytest.raises(TypeError, match="world_size"):
        world._replace(world_size=99)
    with pytest.raises(TypeError, match="no field"):
        world._replace(nodes=3)


def test_make_checks_and_recomputes() -> None:
    world = two_node_world()
    assert World._make(tuple(world)) == world
    fields = list(world)
    fields[1] = 5  # node_rank of a 2-node world
    with pytest.raises(WorldInfoError, match="node_rank 5"):
        World._make(fields)
    stale = list(world._replace(node_rank=1))
    stale[-2:] = [1, 0]  # a wrong world_size and first_rank are not believed
    assert World._make(stale).world_size == 5 and World._make(stale).first_rank == 2


def test_pickle_and_copy_keep_the_world() -> None:
    import copy
    import pickle

    world = two_node_world()._replace(node_rank=1, source="slurm")
    assert pickle.loads(pickle.dumps(world)) == world
    assert copy.deepcopy(world) == world and copy.copy(world).source == "slurm"
