"""GPU -> NUMA node -> CPUs, read from recorded sysfs/proc trees, and the binding plan.

The trees under tests/fixtures/topology/ are described in make_fixtures.py there. Expected
CPU lists are written out by hand from those machines' published layouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import FrozenSet, List, Sequence, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.errors import UsageError
from hpclaunch.machine.topology import read_topology
from hpclaunch.model.binding import (
    bind_plan,
    format_cpulist,
    parse_cpulist,
    plan_binding,
    split_exclusive,
    worker_devices,
)
from hpclaunch.model.plan import Command, build_plan
from hpclaunch.model.world import Host, World
from hpclaunch.options import check_cpu_choice as check_flags

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "topology"
DGX = str(FIXTURES / "dgx-h100")
MI250X = str(FIXTURES / "amd-mi250x")
WORKSTATION = str(FIXTURES / "workstation")
VM = str(FIXTURES / "vm-numa-unknown")

DGX_NODE0 = frozenset(range(0, 56)) | frozenset(range(112, 168))
DGX_ALL = frozenset(range(224))
#: LUMI-G's Slurm cpuset: the first core of each CCD (0, 8, ..., 56) and its sibling reserved
LUMI_ALLOWED = frozenset(range(128)) - {0, 8, 16, 24, 32, 40, 48, 56,
                                        64, 72, 80, 88, 96, 104, 112, 120}


def cpus(text: str) -> Tuple[int, ...]:
    """Expected lists written as ranges: '0-13,112-125' -> sorted tuple (test-side parser)."""
    out: List[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(out))


def local(n: int) -> List[Tuple[int, int, str]]:
    return [(i, i, str(i)) for i in range(n)]


# -- reading --------------------------------------------------------------------------------


def test_dgx_gpus_nodes_sockets_and_siblings() -> None:
    topo = read_topology(DGX)
    assert [(g.pci, g.numa_node, g.minor) for g in topo.gpus] == [
        ("0000:18:00.0", 0, 0), ("0000:2a:00.0", 0, 1), ("0000:3a:00.0", 0, 2),
        ("0000:5d:00.0", 0, 3), ("0000:9a:00.0", 1, 4), ("0000:ab:00.0", 1, 5),
        ("0000:ba:00.0", 1, 6), ("0000:db:00.0", 1, 7)]
    assert topo.gpus[0].model == "NVIDIA H100 80GB HBM3"
    assert topo.node_cpus[0] == DGX_NODE0 and topo.node_cpus[1] == DGX_ALL - DGX_NODE0
    assert topo.cpu_socket[55] == 0 and topo.cpu_socket[56] == 1 and topo.cpu_socket[168] == 1
    assert topo.cpu_core[3] == frozenset({3, 115}) == topo.cpu_core[115]
    assert topo.mems_allowed == frozenset({0, 1})


def test_amd_gcds_from_kfd_in_node_order() -> None:
    topo = read_topology(MI250X)
    assert [(g.vendor, g.pci, g.numa_node) for g in topo.gpus] == [
        ("AMD", "0000:c1:00.0", 3), ("AMD", "0000:c6:00.0", 3), ("AMD", "0000:c9:00.0", 1),
        ("AMD", "0000:ce:00.0", 1), ("AMD", "0000:d1:00.0", 0), ("AMD", "0000:d6:00.0", 0),
        ("AMD", "0000:d9:00.0", 2), ("AMD", "0000:de:00.0", 2)]
    assert len(topo.node_cpus) == 4 and set(topo.cpu_socket.values()) == {0}


def test_old_kernel_siblings_and_device_order() -> None:
    """workstation: thread_siblings_list only; driver minors run against PCI order."""
    default = read_topology(WORKSTATION)
    assert default.cpu_core[5] == frozenset({5, 21})
    assert [g.pci for g in default.gpus] == ["0000:41:00.0", "0000:01:00.0"]  # minor 0, 1
    by_bus = read_topology(WORKSTATION, "PCI_BUS_ID")
    assert [g.pci for g in by_bus.gpus] == ["0000:01:00.0", "0000:41:00.0"]


def test_numa_node_minus_one_and_missing_are_unknown() -> None:
    topo = read_topology(VM)
    assert [g.numa_node for g in topo.gpus] == [0, 1, None, None]


def test_an_empty_root_has_no_gpus_and_no_nodes(tmp_path: Path) -> None:
    topo = read_topology(str(tmp_path))
    assert topo.gpus == () and dict(topo.node_cpus) == {} and topo.mems_allowed is None


# -- planning -------------------------------------------------------------------------------


def test_dgx_exclusive_splits_each_node_by_whole_cores() -> None:
    bindings, warnings = plan_binding("exclusive", read_topology(DGX), local(8), DGX_ALL)
    assert warnings == []
    got = [(b.cpus, b.mem_node) for b in bindings]
    assert got == [
        (cpus("0-13,112-125"), 0), (cpus("14-27,126-139"), 0),
        (cpus("28-41,140-153"), 0), (cpus("42-55,154-167"), 0),
        (cpus("56-69,168-181"), 1), (cpus("70-83,182-195"), 1),
        (cpus("84-97,196-209"), 1), (cpus("98-111,210-223"), 1)]


@pytest.mark.parametrize("mode", ["node", "socket"])
def test_dgx_node_and_socket_give_the_whole_near_half(mode: str) -> None:
    bindings, _ = plan_binding(mode, read_topology(DGX), local(8), DGX_ALL)
    assert [b.cpus for b in bindings] == [cpus("0-55,112-167")] * 4 + [
        cpus("56-111,168-223")] * 4
    assert [b.mem_node for b in bindings] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_amd_exclusive_within_the_cgroup_matches_lumis_masks() -> None:
    """LUMI's documented masks for GCD 0..7 start at cores 49, 57, 17, 25, 1, 9, 33, 41."""
    bindings, warnings = plan_binding("exclusive", read_topology(MI250X), local(8), LUMI_ALLOWED)
    assert warnings == []
    assert [b.cpus for b in bindings] == [
        cpus("49-55,113-119"), cpus("57-63,121-127"), cpus("17-23,81-87"), cpus("25-31,89-95"),
        cpus("1-7,65-71"), cpus("9-15,73-79"), cpus("33-39,97-103"), cpus("41-47,105-111")]
    assert [b.mem_node for b in bindings] == [3, 3, 1, 1, 0, 0, 2, 2]


def test_amd_socket_is_the_whole_allowed_package() -> None:
    bindings, _ = plan_binding("socket", read_topology(MI250X), local(2), LUMI_ALLOWED)
    assert bindings[0].cpus == tuple(sorted(LUMI_ALLOWED)) and bindings[0].mem_node == 3


def test_unknown_node_leaves_only_that_rank_unbound_with_one_warning() -> None:
    bindings, warnings = plan_binding("node", read_topology(VM), local(4), frozenset(range(16)))
    assert [(b.cpus, b.mem_node) for b in bindings] == [
        (cpus("0-7"), 0), (cpus("8-15"), 1), (None, None), (None, None)]
    assert warnings == ["GPU 2 (0000:00:1d.0)'s NUMA node unknown: rank 2 left unbound",
                        "GPU 3 (0000:00:1e.0)'s NUMA node unknown: rank 3 left unbound"]


def test_a_rank_without_a_visible_gpu_is_unbound() -> None:
    bindings, warnings = plan_binding("node", read_topology(VM), [(0, 4, ""), (1, 5, "9")],
                                      frozenset(range(16)))
    assert [b.cpus for b in bindings] == [None, None]
    assert warnings == ["no GPU known for rank 4 (device 'none'): rank 4 left unbound",
                        "no GPU known for rank 5 (device '9'): rank 5 left unbound"]


def test_cpus_outside_the_allowed_set_are_never_given() -> None:
    allowed = frozenset(range(56, 112))  # a job narrowed to socket 1's first threads
    bindings, warnings = plan_binding("node", read_topology(DGX), local(8), allowed)
    assert [b.cpus for b in bindings[:4]] == [None] * 4
    assert [b.cpus for b in bindings[4:]] == [cpus("56-111")] * 4
    assert warnings == [f"none of NUMA node 0's CPUs are allowed here: rank {r}'s CPUs left "
                        "unbound" for r in range(4)]


def test_memory_node_outside_mems_allowed_is_left_unbound() -> None:
    topo = read_topology(DGX)._replace(mems_allowed=frozenset({0}))
    bindings, warnings = plan_binding("node", topo, local(8), DGX_ALL)
    assert [b.mem_node for b in bindings] == [0] * 4 + [None] * 4
    assert bindings[4].cpus == cpus("56-111,168-223")
    assert "memory node 1 is not allowed here (Mems_allowed 0): rank 4's memory left " \
        "unbound" in warnings


def test_uuids_and_explicit_slots_pick_the_right_gpu() -> None:
    topo = read_topology(DGX)
    uuid6 = next(g.uuid for g in topo.gpus if g.pci == "0000:ba:00.0")
    devices = worker_devices([(0, 0, {}), (1, 1, {})],
                             {"CUDA_VISIBLE_DEVICES": f"{uuid6[:12]},GPU-nope"})
    assert devices == [(0, 0, uuid6[:12]), (1, 1, "GPU-nope")]
    bindings, warnings = plan_binding("node", topo, devices, DGX_ALL)
    assert bindings[0].node == 1 and bindings[0].gpu is not None
    assert bindings[0].gpu.pci == "0000:ba:00.0"
    assert bindings[1].cpus is None and len(warnings) == 1
    # the plan's own CUDA_VISIBLE_DEVICES (explicit world_info slots) wins over the inherited
    assert worker_devices([(1, 9, {"CUDA_VISIBLE_DEVICES": "4,7"})],
                          {"CUDA_VISIBLE_DEVICES": "0"}) == [(1, 9, "7")]


def test_device_order_changes_which_gpu_index_zero_is() -> None:
    fastest = plan_binding("node", read_topology(WORKSTATION), local(1), frozenset(range(32)))
    by_bus = plan_binding("node", read_topology(WORKSTATION, "PCI_BUS_ID"), local(1),
                          frozenset(range(32)))
    assert fastest[0][0].gpu is not None and by_bus[0][0].gpu is not None
    assert fastest[0][0].gpu.model == "NVIDIA GeForce RTX 4090"
    assert by_bus[0][0].gpu.model == "NVIDIA RTX A4000"


def test_exclusive_refuses_more_ranks_than_cpus() -> None:
    with pytest.raises(UsageError, match="9 workers share 8 allowed CPU"):
        plan_binding("exclusive", read_topology(VM), [(i, i, "0") for i in range(9)],
                     frozenset(range(16)))


def test_exclusive_with_fewer_cores_than_ranks_cuts_threads() -> None:
    topo = read_topology(WORKSTATION)
    shares = split_exclusive(frozenset({0, 16, 1, 17}), topo.cpu_core, 4)
    assert shares == [(0,), (16,), (1,), (17,)]
    assert split_exclusive(frozenset({0, 16, 1, 17}), topo.cpu_core, 2) == [(0, 16), (1, 17)]


def test_bind_plan_sets_cpus_memory_omp_and_dry_run_keys() -> None:
    world = World(hosts=(Host("n0", tuple(range(8))),), node_rank=0, master_addr="n0",
                  master_port=1234, run_id="job", gpu_slots=True)
    plan = build_plan("explicit", world, Command("train.py", python="py"))
    topo = read_topology(DGX)
    bound, lines, warnings = bind_plan(plan, "exclusive", topo, {}, DGX_ALL, DGX)
    assert warnings == []
    shown = bound.to_json()["workers"]
    assert shown[5]["cpus"] == list(cpus("70-83,182-195")) and shown[5]["mem_node"] == 1
    assert shown[5]["env"]["OMP_NUM_THREADS"] == "28"
    assert lines[0].startswith("numa binding exclusive: 2 socket(s), 2 NUMA node(s), "
                               "8 NVIDIA GPU(s) in driver minor order, allowed CPUs 0-223")
    assert lines[6] == ("  rank 5 (local 5): GPU 5 (0000:ab:00.0) node 1 socket 1 -> "
                        "cpus 70-83,182-195 (28), memory node 1")
    node_plan, _, _ = bind_plan(plan, "node", topo, {}, DGX_ALL)
    assert "OMP_NUM_THREADS" not in node_plan.workers[0].env_dict()


def test_no_gpus_warns_once_and_binds_nothing(tmp_path: Path) -> None:
    world = World(hosts=(Host("n0", (0, 1)),), node_rank=0, master_addr="n0",
                  master_port=1234, run_id="job", gpu_slots=False)
    plan = build_plan("local", world, Command("train.py", python="py"))
    bound, _, warnings = bind_plan(plan, "node", read_topology(str(tmp_path)), {}, {0, 1})
    assert warnings == ["no GPUs found: --numa_binding node leaves every worker unbound"]
    assert all(s.cpus is None and s.mem_node is None for s in bound.workers)


def test_mixed_models_without_pci_order_warn() -> None:
    world = World(hosts=(Host("n0", (0, 1)),), node_rank=0, master_addr="n0",
                  master_port=1234, run_id="job", gpu_slots=True)
    plan = build_plan("local", world, Command("train.py", python="py"))
    _, _, warnings = bind_plan(plan, "node", read_topology(WORKSTATION), {}, set(range(32)))
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in w for w in warnings)
    _, _, quiet = bind_plan(plan, "node", read_topology(WORKSTATION, "PCI_BUS_ID"), {},
                            set(range(32)))
    assert quiet == []


def test_numa_binding_and_bind_cores_exclude_each_other() -> None:
    with pytest.raises(UsageError, match="use one"):
        check_flags("node", True, None)
    with pytest.raises(UsageError, match="use one"):
        check_flags("exclusive", False, "0-3")
    check_flags("none", True, "0-3")  # DeepSpeed's flags alone keep their meaning


# -- properties -----------------------------------------------------------------------------

cpu_sets = st.frozensets(st.integers(0, 300), max_size=80)


@given(cpu_sets)
def test_cpulist_round_trips(cpu_set: FrozenSet[int]) -> None:
    text = format_cpulist(sorted(cpu_set))
    assert parse_cpulist(text) == cpu_set
    assert text == "" or all(p and p[0].isdigit() for p in text.split(","))


DGX_TOPO = read_topology(DGX)


@given(st.frozensets(st.sampled_from(sorted(DGX_NODE0)), min_size=1), st.integers(1, 8))
def test_exclusive_shares_are_disjoint_whole_cores_within_allowed(
    allowed: FrozenSet[int], ways: int
) -> None:
    if ways > len(allowed):
        with pytest.raises(UsageError):
            split_exclusive(allowed, DGX_TOPO.cpu_core, ways)
        return
    shares = split_exclusive(allowed, DGX_TOPO.cpu_core, ways)
    flat: Sequence[int] = [c for share in shares for c in share]
    assert len(shares) == ways and all(shares)
    assert len(flat) == len(set(flat)) and set(flat) <= allowed
    cores = {DGX_TOPO.cpu_core[c] & allowed for c in allowed}
    if len(cores) >= ways:  # whole cores: a core's allowed siblings never split
        assert set(flat) == allowed
        for core in cores:
            assert sum(1 for share in shares if core & set(share)) == 1
        sizes = [sum(1 for core in cores if core & set(share)) for share in shares]
        assert max(sizes) - min(sizes) <= 1


def test_the_readme_report_is_what_the_recorded_dgx_gives() -> None:
    readme = (FIXTURES.parent.parent.parent / "README.md").read_text()
    block = readme.split("```text\nhpclaunch: numa binding exclusive", 1)[1].split("```", 1)[0]
    shown = ("hpclaunch: numa binding exclusive" + block).strip("\n").splitlines()
    world = World(hosts=(Host("dgx", tuple(range(8))),), node_rank=0, master_addr="dgx",
                  master_port=1234, run_id="job", gpu_slots=True)
    plan = build_plan("explicit", world, Command("train.py", python="py"))
    _, lines, _ = bind_plan(plan, "exclusive", read_topology(DGX), {}, DGX_ALL)
    assert shown == ["hpclaunch: " + lines[0]] + lines[1:]


def test_slurm_renumbered_devices_mean_the_jobs_gpus() -> None:
    """ConstrainDevices=yes: CUDA_VISIBLE_DEVICES=0,1 are the job's GPUs 4 and 5 (node 1)."""
    world = World(hosts=(Host("n0", (0, 1)),), node_rank=0, master_addr="n0",
                  master_port=1234, run_id="job", gpu_slots=True)
    plan = build_plan("slurm", world, Command("train.py", python="py"))
    topo = read_topology(DGX)
    constrained = {"SLURM_STEP_GPUS": "4,5", "CUDA_VISIBLE_DEVICES": "0,1"}
    bound, _, _ = bind_plan(plan, "node", topo, constrained, DGX_ALL)
    assert [s.mem_node for s in bound.workers] == [1, 1]
    unconstrained = {"SLURM_STEP_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0,1"}
    bound, _, _ = bind_plan(plan, "node", topo, unconstrained, DGX_ALL)
    assert [s.mem_node for s in bound.workers] == [0, 0]


def test_amd_without_kfd_falls_back_to_drm_cards(tmp_path: Path) -> None:
    """No /sys/class/kfd (amdgpu without KFD): cards of vendor 0x1002, connectors skipped."""
    for card, pci, node in (("card1", "0000:c1:00.0", "3"), ("card0", "0000:03:00.0", "-1")):
        device = tmp_path / "sys/class/drm" / card / "device"
        device.mkdir(parents=True)
        (device / "vendor").write_text("0x1002\n")
        (device / "uevent").write_text(f"DRIVER=amdgpu\nPCI_CLASS=38000\nPCI_SLOT_NAME={pci}\n")
        (device / "numa_node").write_text(node + "\n")
    (tmp_path / "sys/class/drm/card1-DP-1").mkdir()
    topo = read_topology(str(tmp_path))
    assert [(g.vendor, g.pci, g.numa_node) for g in topo.gpus] == [
        ("AMD", "0000:03:00.0", None), ("AMD", "0000:c1:00.0", 3)]


@given(st.frozensets(st.integers(0, 223), min_size=8), st.sampled_from(["node", "socket",
                                                                           "exclusive"]))
def test_any_plan_stays_within_the_allowed_cpus(allowed: FrozenSet[int], mode: str) -> None:
    try:
        bindings, _ = plan_binding(mode, DGX_TOPO, local(8), allowed)
    except UsageError:
        assert mode == "exclusive"  # a node had fewer allowed CPUs than its 4 ranks
        return
    given_cpus = [set(b.cpus) for b in bindings if b.cpus]
    assert all(cpu_set <= allowed for cpu_set in given_cpus)
    if mode == "exclusive":
        flat = [c for cpu_set in given_cpus for c in cpu_set]
        assert len(flat) == len(set(flat))
    for b in bindings:  # never a CPU of the other socket
        assert b.cpus is None or {DGX_TOPO.cpu_socket[c] for c in b.cpus} == {b.socket}
