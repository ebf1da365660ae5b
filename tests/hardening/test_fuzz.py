"""Fuzzing every parser that reads outside input, through the real CLI entry point.

The only outcomes allowed: a correct plan (exit 0) or the contract's one-line error (exit 2).
Anything else -- a traceback, another exit code, a second line -- fails. Cases hypothesis
once found are kept as ``@example``s.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpclaunch import cli
from hpclaunch.adapters.base import WorldOptions
from hpclaunch.adapters.local import LocalAdapter
from hpclaunch.errors import UsageError
from hpclaunch.probe import parse_gpu_list
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
    if code == 0:
        assert isinstance(value, dict) and result["world_info"] == value
        assert result["world_size"] == sum(len(v) for v in value.values())


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


@given(st.text(max_size=30))
@example("0,1,,2")
@example("GPU-1234,GPU-5678")
@example("0,0")
@example("\u00b9")  # a Unicode digit: str.isdigit() accepts it, int() does not
def test_gpu_list_fuzz(value: str) -> None:
    parsed = parse_gpu_list(value)
    if parsed is not None:
        assert all(isinstance(i, int) and i >= 0 for i in parsed)
        assert len(set(parsed)) == len(parsed)
    env = {"CUDA_VISIBLE_DEVICES": value}
    try:
        world = LocalAdapter().world(env, WorldOptions(master_port=29500))
    except UsageError:
        return
    assert world.world_size >= 1


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
    from hpclaunch.hostlist import expand_hostlist, parse_counts

    for parse in (expand_hostlist, parse_counts):
        try:
            parse(expression)
        except UsageError:
            pass
