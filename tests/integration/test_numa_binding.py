"""--numa_binding for real: workers started by the launcher report, after exec, the CPUs and
memory policy the kernel gives them.

This machine has no GPU, so the launcher reads a topology root written here
(``HPCLAUNCH_TOPOLOGY_ROOT``, test-only): this machine's real NUMA node 0 and allowed CPUs,
plus two made-up NVIDIA GPUs on node 0. The binding itself is real: node 0 exists, so the
kernel accepts and reports MPOL_PREFERRED on it, and the affinity is the kernel's.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from hpclaunch.spawner.elastic.agent import WORKER_SHIM, shim_argument
from tests.conftest import BIN, free_port, require, run_launcher

PROBE = str(BIN / "numa_probe.py")
MPOL_PREFERRED = 1
NODE0 = "/sys/devices/system/node/node0"


def node0_allowed() -> List[int]:
    require(os.path.isdir(NODE0), "a NUMA kernel (/sys/devices/system/node/node0)")
    with open(f"{NODE0}/cpulist") as handle:
        node0: List[int] = []
        for part in handle.read().strip().split(","):
            lo, _, hi = part.partition("-")
            node0.extend(range(int(lo), int(hi or lo) + 1))
    allowed = sorted(set(node0) & os.sched_getaffinity(0))
    require(len(allowed) >= 2, "two allowed CPUs on NUMA node 0")
    return allowed


def write_root(root: Path, cpus: List[int]) -> None:
    """Node 0 = ``cpus``, one thread per core, one socket; GPUs minor 0 and 1 on node 0."""
    def put(path: str, text: str) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)

    put("sys/devices/system/node/node0/cpulist", ",".join(map(str, cpus)) + "\n")
    for cpu in cpus:
        put(f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id", "0\n")
        put(f"sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list", f"{cpu}\n")
    for minor, pci in enumerate(("0000:3b:00.0", "0000:86:00.0")):
        put(f"proc/driver/nvidia/gpus/{pci}/information",
            f"Model: \t\t NVIDIA A100-SXM4-40GB\nGPU UUID: \t GPU-{minor}abc\n"
            f"Bus Location: \t {pci}\nDevice Minor: \t {minor}\n")
        put(f"sys/bus/pci/devices/{pci}/numa_node", "0\n")
    put("proc/self/status", Path("/proc/self/status").read_text())


def launch(tmp_path: Path, mode: str, *extra: str) -> subprocess.CompletedProcess[str]:
    allowed = node0_allowed()
    root, out = tmp_path / "root", tmp_path / "out"
    out.mkdir()
    write_root(root, allowed)
    info = base64.b64encode(json.dumps({"localhost": [0, 1]}).encode()).decode()
    env = dict(os.environ, HPCLAUNCH_TOPOLOGY_ROOT=str(root))
    return run_launcher("--world_info", info, "--master_port", str(free_port()),
                        "--numa_binding", mode, *extra, PROBE, "--out", str(out), env=env,
                        timeout=60)


def records(tmp_path: Path) -> Dict[int, dict]:
    return {r: json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)}


def test_exclusive_binding_survives_exec(tmp_path: Path) -> None:
    allowed = node0_allowed()
    result = launch(tmp_path, "exclusive")
    assert result.returncode == 0, result.stderr
    got = records(tmp_path)
    half = (len(allowed) + 1) // 2  # one thread per core: first half, second half
    assert got[0]["cpus"] == allowed[:half] and got[1]["cpus"] == allowed[half:]
    for record in got.values():
        assert record["mempolicy"] == {"mode": MPOL_PREFERRED, "nodes": [0]}, record
        assert record["numa_maps"] == ["prefer:0"], record
        assert record["omp"] == str(len(record["cpus"]))
        assert record["cvd"] == "0,1"


def test_node_binding_and_the_debug_report(tmp_path: Path) -> None:
    allowed = node0_allowed()
    result = launch(tmp_path, "node", "--log_level", "debug")
    assert result.returncode == 0, result.stderr
    got = records(tmp_path)
    assert got[0]["cpus"] == got[1]["cpus"] == allowed
    assert got[0]["omp"] is None  # node mode shares the node: thread count left to the user
    assert got[1]["mempolicy"] == {"mode": MPOL_PREFERRED, "nodes": [0]}
    head = [line for line in result.stderr.splitlines() if "numa binding node" in line]
    assert len(head) == 1 and "2 NVIDIA GPU(s) in driver minor order" in head[0]
    assert "  rank 1 (local 1): GPU 1 (0000:86:00.0) node 0 socket 0 -> cpus " in result.stderr


def test_without_the_flag_nothing_is_bound(tmp_path: Path) -> None:
    result = launch(tmp_path, "none")
    assert result.returncode == 0, result.stderr
    for record in records(tmp_path).values():
        assert record["mempolicy"] == {"mode": 0, "nodes": []}  # MPOL_DEFAULT
        assert record["numa_maps"] == ["default"]
        assert record["cpus"] == sorted(os.sched_getaffinity(0))


def test_dry_run_shows_each_workers_cpus_and_memory_node(tmp_path: Path) -> None:
    allowed = node0_allowed()
    result = launch(tmp_path, "exclusive", "--dry-run")
    assert result.returncode == 0, result.stderr
    workers = json.loads(result.stdout)["workers"]
    half = (len(allowed) + 1) // 2
    assert [(w["cpus"], w["mem_node"]) for w in workers] == [
        (allowed[:half], 0), (allowed[half:], 0)]
    assert not (tmp_path / "out" / "rank0.json").exists()  # nothing ran


def test_elastic_worker_shim_prefers_the_node_after_exec(tmp_path: Path) -> None:
    """Elastic workers are started by torch's agent, then bind themselves in the shim."""
    node0_allowed()
    config = {"agent": os.getpid(), "ranks": [{"env": {}, "cpus": None, "mem_node": 0}],
              "log_path": None}
    (tmp_path / "out").mkdir()
    result = subprocess.run(
        [sys.executable, "-I", "-S", WORKER_SHIM, shim_argument(config), "--",
         sys.executable, PROBE, "--out", str(tmp_path / "out")],
        env=dict(os.environ, RANK="0", LOCAL_RANK="0"), capture_output=True, text=True,
        timeout=30)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "rank0.json").read_text())
    assert record["mempolicy"] == {"mode": MPOL_PREFERRED, "nodes": [0]}


def test_a_gpu_without_a_node_is_reported_and_left_unbound(tmp_path: Path) -> None:
    allowed = node0_allowed()
    root = tmp_path / "root"
    write_root(root, allowed)
    (root / "sys/bus/pci/devices/0000:86:00.0/numa_node").write_text("-1\n")
    (tmp_path / "out").mkdir()
    info = base64.b64encode(json.dumps({"localhost": [0, 1]}).encode()).decode()
    result = run_launcher("--world_info", info, "--master_port", str(free_port()),
                          "--numa-binding", "node", PROBE, "--out", str(tmp_path / "out"),
                          env=dict(os.environ, HPCLAUNCH_TOPOLOGY_ROOT=str(root)), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("NUMA node unknown") == 1
    assert "hpclaunch: warning: GPU 1 (0000:86:00.0)'s NUMA node unknown: rank 1 left " \
        "unbound" in result.stderr
    got = records(tmp_path)
    assert got[0]["mempolicy"]["nodes"] == [0] and got[0]["cpus"] == allowed
    assert got[1]["mempolicy"] == {"mode": 0, "nodes": []}


def test_elastic_workers_are_bound_too(torch_available: None, tmp_path: Path) -> None:
    """Elastic mode: torch's agent starts the workers; the shim binds them before exec."""
    allowed = node0_allowed()
    result = launch(tmp_path, "exclusive", "--enable_elastic_training", "--kill_timeout", "3")
    assert result.returncode == 0, result.stderr
    got = records(tmp_path)
    half = (len(allowed) + 1) // 2
    assert got[0]["cpus"] == allowed[:half] and got[1]["cpus"] == allowed[half:]
    assert got[0]["mempolicy"] == got[1]["mempolicy"] == {"mode": MPOL_PREFERRED, "nodes": [0]}
    assert got[1]["numa_maps"] == ["prefer:0"]


def deny_numa_syscalls() -> None:
    """preexec_fn: a seccomp filter like Docker's default one without CAP_SYS_NICE, making
    get_mempolicy and set_mempolicy fail with EPERM (inherited by the launcher's children)."""
    import ctypes

    numbers = {"x86_64": (238, 239), "aarch64": (237, 236)}[os.uname().machine]
    seccomp = ctypes.CDLL("libseccomp.so.2")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    ctx = ctypes.c_void_p(seccomp.seccomp_init(ctypes.c_uint32(0x7FFF0000)))  # ALLOW
    for number in numbers:
        errno_eperm = ctypes.c_uint32(0x00050000 | 1)  # SCMP_ACT_ERRNO(EPERM)
        assert seccomp.seccomp_rule_add(ctx, errno_eperm, ctypes.c_int(number),
                                        ctypes.c_uint(0)) == 0
    assert seccomp.seccomp_load(ctx) == 0


def test_where_memory_policy_is_forbidden_cpus_are_still_bound(tmp_path: Path) -> None:
    allowed = node0_allowed()
    require(os.uname().machine in ("x86_64", "aarch64") and any(
        Path(d, "libseccomp.so.2").exists() for d in ("/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64", "/lib64")), "libseccomp.so.2 (apt-get install libseccomp2)")
    root, out = tmp_path / "root", tmp_path / "out"
    out.mkdir()
    write_root(root, allowed)
    info = base64.b64encode(json.dumps({"localhost": [0, 1]}).encode()).decode()
    result = subprocess.run(
        [sys.executable, "-m", "hpclaunch", "--world_info", info, "--master_port",
         str(free_port()), "--numa_binding", "exclusive", PROBE, "--out", str(out)],
        env=dict(os.environ, HPCLAUNCH_TOPOLOGY_ROOT=str(root)), preexec_fn=deny_numa_syscalls,
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "hpclaunch: warning: memory binding is not available here (get_mempolicy failed: " \
        "Operation not permitted): workers' CPUs are bound, their memory is not" in result.stderr
    got = records(tmp_path)
    half = (len(allowed) + 1) // 2
    assert got[0]["cpus"] == allowed[:half] and got[1]["cpus"] == allowed[half:]
    assert got[0]["mempolicy"] == {"error": "Operation not permitted"}  # the filter held
    assert got[0]["numa_maps"] == got[1]["numa_maps"] == ["default"]
