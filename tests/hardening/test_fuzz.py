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


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = cli.main([*argv, "--dry-run", WORKER] if "--dry-run" not in argv else list(argv))
    out, err = capsys.readouterr()
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
def test_world_info_json_fuzz(capsys: pytest.CaptureFixture[str], value: Any, node: int) -> None:
    encoded = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
    code, result = run_cli(capsys, "--world_info", encoded, "--node_rank", str(node))
    if code == 0:
        assert isinstance(value, dict) and result["world_info"] == value
        assert result["world_size"] == sum(len(v) for v in value.values())


@FUZZ
@given(st.text(max_size=40))
@example("")
@example("====")
@example("e30")  # {} without padding
def test_world_info_raw_text_fuzz(capsys: pytest.CaptureFixture[str], text: str) -> None:
    if text.startswith("@") or text.startswith("-") or "\x00" in text:
        text = "x" + text.replace("\x00", "")
    run_cli(capsys, f"--world_info={text}")


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
def test_flag_values_fuzz(capsys: pytest.CaptureFixture[str], value: str, flag: str) -> None:
    if "\x00" in value:
        value = value.replace("\x00", "")
    extra = ["--bind_cores_to_rank"] if flag == "--bind_core_list" else []
    run_cli(
        capsys, *extra, f"{flag}={value}", "--adapter", "local"
    ) if flag != "--adapter" else run_cli(capsys, f"{flag}={value}")


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
