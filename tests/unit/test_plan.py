"""The launch plan: the contract's env and argv, and core sharing, as properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.errors import UsageError
from hpclaunch.model.binding import parse_core_list, share_cores
from hpclaunch.model.plan import Command, build_plan, worker_argv
from hpclaunch.model.world import Host, World
from hpclaunch.options import LaunchOptions

CONTRACT_KEYS = {
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CROSS_RANK",
    "CROSS_SIZE",
    "LOCAL_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
}

slot_lists = st.lists(st.integers(0, 64), min_size=1, max_size=8, unique=True)
worlds = st.lists(slot_lists, min_size=1, max_size=6).flatmap(
    lambda slots: st.integers(0, len(slots) - 1).map(
        lambda node: World(
            hosts=tuple(Host(f"n{i}", tuple(s)) for i, s in enumerate(slots)),
            node_rank=node,
            master_addr="n0",
            master_port=1234,
            run_id="job-7",
            gpu_slots=True,
        )
    )
)


@given(worlds)
def test_env_matches_the_contract_for_any_world(world: World) -> None:
    plan = build_plan("explicit", world, Command("train.py", ("--x",), python="py"))
    offset = sum(len(h.slots) for h in world.hosts[: world.node_rank])
    assert [w.rank for w in plan.workers] == list(range(offset, offset + world.local_world_size))
    for local_rank, spec in enumerate(plan.workers):
        env = spec.env_dict()
        assert set(env) == CONTRACT_KEYS | {"CUDA_VISIBLE_DEVICES"}
        assert env["RANK"] == env["ROLE_RANK"] == str(spec.rank)
        assert env["LOCAL_RANK"] == str(local_rank) == str(spec.local_rank)
        assert env["WORLD_SIZE"] == env["ROLE_WORLD_SIZE"] == str(world.world_size)
        assert env["LOCAL_WORLD_SIZE"] == env["LOCAL_SIZE"] == str(world.local_world_size)
        assert env["CROSS_RANK"] == env["GROUP_RANK"] == str(world.node_rank)
        assert env["CROSS_SIZE"] == env["GROUP_WORLD_SIZE"] == str(world.num_nodes)
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, world.this_host.slots))
        assert env["MASTER_ADDR"] == "n0" and env["MASTER_PORT"] == "1234"
        assert env["TORCHELASTIC_RUN_ID"] == "job-7"
        assert spec.argv == ("py", "-u", "train.py", f"--local_rank={local_rank}", "--x")


def test_cpu_world_sets_no_cuda_visible_devices() -> None:
    world = World((Host("h", (0, 1)),), 0, "127.0.0.1", 29500, "r", gpu_slots=False)
    for spec in build_plan("local", world, Command("t.py")).workers:
        assert "CUDA_VISIBLE_DEVICES" not in spec.env_dict()


def test_non_contiguous_gpu_ids_are_passed_as_listed() -> None:
    world = World((Host("a", (2, 5)),), 0, "127.0.0.1", 29500, "r")
    env = build_plan("explicit", world, Command("t.py")).workers[1].env_dict()
    assert env["CUDA_VISIBLE_DEVICES"] == "2,5"
    assert env["LOCAL_RANK"] == "1"


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            Command("m.x", ("a",), mode="module", python="py"),
            ("py", "-u", "-m", "m.x", "--local_rank=3", "a"),
        ),
        (Command("/bin/t", ("a",), mode="exec"), ("/bin/t", "--local_rank=3", "a")),
        (Command("t.py", ("a",), python="py", pass_local_rank=False), ("py", "-u", "t.py", "a")),
    ],
)
def test_argv_modes(command: Command, expected: tuple[str, ...]) -> None:
    assert worker_argv(command, 3) == expected


@given(st.lists(st.integers(0, 255), min_size=1, max_size=64, unique=True), st.integers(1, 64))
def test_core_shares_are_even_and_disjoint(cores: list[int], workers: int) -> None:
    if workers > len(cores):
        with pytest.raises(UsageError):
            share_cores(cores, workers)
        return
    shares = share_cores(cores, workers)
    assert len(shares) == workers
    assert len({len(s) for s in shares}) == 1
    flat = [c for s in shares for c in s]
    assert len(flat) == len(set(flat)) and set(flat) <= set(cores)


def test_parse_core_list() -> None:
    assert parse_core_list("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    for bad in ("", "a", "3-1", "1,1", "1-", "-2"):
        with pytest.raises(UsageError):
            parse_core_list(bad)


def test_binding_sets_omp_threads_to_the_share() -> None:
    world = World((Host("h", (0, 1)),), 0, "127.0.0.1", 29500, "r", gpu_slots=False)
    launch = LaunchOptions(bind_cores=(0, 1, 2, 3, 4))
    plan = build_plan("local", world, Command("t.py"), launch=launch)
    assert [w.cpus for w in plan.workers] == [(0, 1), (2, 3)]
    assert all(w.env_dict()["OMP_NUM_THREADS"] == "2" for w in plan.workers)
