"""Fuzzing every parser that reads outside input, through the real CLI entry point.

The only outcomes allowed: a correct plan (exit 0) or the contract's one-line error (exit 2).
Anything else -- a traceback, another exit code, a second line -- fails. Cases hypothesis
once found are kept as ``@example``s.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpclaunch import cli
from hpclaunch.adapters.base import WorldOptions
from hpclaunch.adapters.local import LocalAdapter
from hpclaunch.errors import UsageError
from hpclaunch.machine.gpus import parse_gpu_list
from tests.conftest import WORKER

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run_cli(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capfd.readouterr()
    code = cli.main([*argv, "--dry-run", WORKER] if "--dry-run" not in argv else list(argv))
    out, err = capfd.readouterr()
    if code == 0:
        return code, json.loads(out)
    assert code == 2, (code, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpclaunch: error: "), err
    return code, lines[0]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(json_values, st.integers(-2, 5))
@example({"a": [0, 1], "b": [0]}, 1)
@example({"a": [0], "a ": [1]}, 0)
@example({"a": [1e300]}, 0)
def test_world_info_json_fuzz(capfd: pytest.CaptureFixture[str], value: Any, node: int) -> None:
    encoded = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
    code, result = run_cli(capfd, "--world_info", encoded, "--node_rank", str(node))
    assert code == (0 if world_info_is_valid(value, node) else 2), (value, node, result)
    if code == 0:
        check_explicit_plan(result, value, node)


@FUZZ
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda host: host == host.strip()),
        st.lists(st.integers(0, 64), min_size=1, max_size=4, unique=True),
        min_size=1,
        max_size=5,
    ),
    st.data(),
)
def test_valid_world_info_gives_the_contract_s_plan(
    capfd: pytest.CaptureFixture[str], value: Dict[str, List[int]], data: st.DataObject
) -> None:
    node = data.draw(st.integers(0, len(value) - 1))
    encoded = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
    code, plan = run_cli(capfd, "--world_info", encoded, "--node_rank", str(node))
    assert code == 0, plan
    check_explicit_plan(plan, value, node)


def world_info_is_valid(value: Any, node: int) -> bool:
    """The contract's world_info, modelled here (not taken from hpclaunch): a non-empty JSON
    object, host names non-empty without surrounding spaces, each host a non-empty list of
    distinct integers >= 0 (JSON true is not an integer), and --node_rank one of its nodes."""
    if not isinstance(value, dict) or not value or not 0 <= node < len(value):
        return False
    for host, slots in value.items():
        if not host or host != host.strip() or not isinstance(slots, list) or not slots:
            return False
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in slots):
            return False
        if len(set(slots)) != len(slots):
            return False
    return True


def check_explicit_plan(plan: Any, value: Dict[str, List[int]], node: int) -> None:
    """What the contract says a valid world_info gives this node's workers."""
    hosts = list(value)
    first_rank = sum(len(value[h]) for h in hosts[:node])
    slots = value[hosts[node]]
    assert plan["world_info"] == value
    assert plan["node_rank"] == node
    assert plan["world_size"] == sum(len(v) for v in value.values())
    assert [w["rank"] for w in plan["workers"]] == list(range(first_rank, first_rank + len(slots)))
    for local_rank, worker in enumerate(plan["workers"]):
        env = worker["env"]
        assert worker["local_rank"] == local_rank
        assert env["LOCAL_RANK"] == str(local_rank) and env["RANK"] == str(worker["rank"])
        assert env["LOCAL_WORLD_SIZE"] == str(len(slots))
        assert env["CROSS_RANK"] == str(node) and env["CROSS_SIZE"] == str(len(hosts))
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(str(s) for s in slots)


@FUZZ
@given(st.text(max_size=40))
@example("")
@example("====")
@example("e30")  # {} without padding
def test_world_info_raw_text_fuzz(capfd: pytest.CaptureFixture[str], text: str) -> None:
    if text.startswith("@") or text.startswith("-") or "\x00" in text:
        text = "x" + text.replace("\x00", "")
    run_cli(capfd, f"--world_info={text}")


@FUZZ
@given(
    st.text(max_size=12),
    st.sampled_from(
        [
            "--master_port",
            "--node_rank",
            "--nproc_per_node",
            "--kill_timeout",
            "--save_pid",
            "--bind_core_list",
            "--ranks_filter",
            "--log_level",
            "--adapter",
        ]
    ),
)
@example("1e9", "--master_port")
@example("nan", "--kill_timeout")
@example("inf", "--kill_timeout")
def test_flag_values_fuzz(capfd: pytest.CaptureFixture[str], value: str, flag: str) -> None:
    if "\x00" in value:
        value = value.replace("\x00", "")
    extra = ["--bind_cores_to_rank"] if flag == "--bind_core_list" else []
    run_cli(
        capfd, *extra, f"{flag}={value}", "--adapter", "local"
    ) if flag != "--adapter" else run_cli(capfd, f"{flag}={value}")


def expected_local_slots(value: str) -> Tuple[Tuple[int, ...], bool]:
    """This node's slots for a CUDA_VISIBLE_DEVICES value, and whether they are GPU ids to
    pass on, modelled from the contract ("one worker per visible GPU, else 1"): no devices
    ("", NoDevFiles, -1) is one worker; a list of distinct decimal ids is those GPUs; anything
    else (UUIDs, MIG names) is one worker per non-empty entry, the variable left as it is."""
    text = value.strip()
    if text in ("", "NoDevFiles", "-1"):
        return (0,), False
    parts = [part.strip() for part in text.split(",")]
    if all(re.fullmatch(r"[0-9]+", part) for part in parts):
        ids = tuple(int(part) for part in parts)
        if len(set(ids)) == len(ids):
            return ids, True
    return tuple(range(max(1, len([part for part in parts if part])))), False


@given(st.one_of(st.text(max_size=30), st.lists(st.integers(0, 20), max_size=6).map(
    lambda ids: ",".join(map(str, ids)))))
@example("0,1,,2")
@example("GPU-1234,GPU-5678")
@example("0,0")
@example("\u00b9")  # a Unicode digit: str.isdigit() accepts it, int() does not
@example(" 3 , 1")
def test_gpu_list_fuzz(value: str) -> None:
    parsed = parse_gpu_list(value)
    if parsed is not None:
        assert all(isinstance(i, int) and i >= 0 for i in parsed)
        assert len(set(parsed)) == len(parsed)
    env = {"CUDA_VISIBLE_DEVICES": value}
    world = LocalAdapter().world(env, WorldOptions(master_port=29500))
    slots, gpu_slots = expected_local_slots(value)
    assert (world.hosts[0].slots, world.gpu_slots) == (slots, gpu_slots), value
    assert world.world_size == len(slots)


@FUZZ
@given(
    st.sampled_from(["--master_port", "--nproc_per_node", "--kill_timeout"]),
    st.integers(-5, 70000),
)
@example("--master_port", 0)
@example("--master_port", 65535)
@example("--master_port", 65536)
@example("--nproc_per_node", 0)
@example("--kill_timeout", 0)
def test_integer_flags_model(capfd: pytest.CaptureFixture[str], flag: str, number: int) -> None:
    """Each integer flag against its range in the contract: inside it a plan, outside exit 2."""
    if flag == "--nproc_per_node":
        number = number % 300 - 5  # a plan of 70000 workers is slow to print, not more telling
    valid = {
        "--master_port": 1 <= number <= 65535,
        "--nproc_per_node": number >= 1,
        "--kill_timeout": number >= 0,
    }[flag]
    code, plan = run_cli(capfd, f"{flag}={number}", "--adapter", "local")
    assert code == (0 if valid else 2), (flag, number, plan)
    if code == 0 and flag == "--master_port":
        assert plan["master_port"] == number
    if code == 0 and flag == "--nproc_per_node":
        assert plan["world_size"] == number == len(plan["workers"])


SLURM_KEYS = [
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "SLURM_PROCID",
    "SLURM_NODEID",
    "SLURM_LOCALID",
    "SLURMD_NODENAME",
    "SLURM_STEP_NODELIST",
    "SLURM_STEP_NUM_NODES",
    "SLURM_NNODES",
    "SLURM_JOB_NODELIST",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_JOB_CPUS_PER_NODE",
    "CUDA_VISIBLE_DEVICES",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "GPU_DEVICE_ORDINAL",
    "SLURM_GPUS_PER_NODE",
    "SLURM_GPUS",
    "SLURM_GPUS_ON_NODE",
]
A_STEP = {
    "SLURM_JOB_ID": "41",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "1",
    "SLURM_NODEID": "1",
    "SLURM_LOCALID": "0",
    "SLURMD_NODENAME": "n2",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    "CUDA_VISIBLE_DEVICES": "0,1",
}
env_values = st.one_of(
    st.text(alphabet="n0123456789[]-,()x ", max_size=16),
    st.text(max_size=8),
    st.integers(-3, 70000).map(str),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(SLURM_KEYS), env_values, max_size=8))
@example({"SLURM_STEP_NODELIST": "n[1-2]0"})
@example({"SLURM_STEP_ID": "", "SLURM_PROCID": "", "SLURM_NODEID": "", "SLURM_NNODES": "0"})
@example({"SLURM_STEP_TASKS_PER_NODE": "1(x0)"})
@example({"SLURM_STEP_NODELIST": "n[99999999999999999999-99999999999999999999]"})
def test_slurm_environment_fuzz(overrides: dict[str, str]) -> None:
    """Any Slurm environment: a consistent World or a UsageError, nothing else."""
    from hpclaunch.adapters.slurm import SlurmAdapter

    env = {**A_STEP, **overrides}
    adapter = SlurmAdapter(gpu_probe=lambda e: ((), False))
    try:
        world = adapter.world(env, WorldOptions())
    except UsageError:
        return
    assert 0 <= world.node_rank < world.num_nodes
    assert 1 <= world.master_port <= 65535
    if world.run_id.endswith(".batch"):  # a one-node sbatch shell runs locally
        assert world.num_nodes == 1 and world.master_addr == "127.0.0.1"
    else:
        assert world.master_addr == world.hosts[0].name


@given(st.text(alphabet="ab01[]-,x()^ ", max_size=30))
@example("a[1-3]b[2-1]")
@example("a[,]")
def test_hostlist_and_counts_fuzz(expression: str) -> None:
    from hpclaunch.model.hostlist import expand_hostlist, parse_counts

    for parse in (expand_hostlist, parse_counts):
        try:
            parse(expression)
        except UsageError:
            pass
