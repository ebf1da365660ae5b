"""Every bad invocation: exit 2, one line 'hpclaunch: error: ...', no traceback, nothing spawned.

"Nothing spawned" is checked for real: the training script would create a marker file.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import error_line, run_launcher


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.fixture
def marker_script(tmp_path: Path) -> Path:
    script = tmp_path / "train.py"
    script.write_text(f"open({str(tmp_path / 'spawned')!r}, 'w').close()\n")
    return script


GOOD = b64('{"a": [0, 1], "b": [0]}')

CASES = {
    "bad base64": (["--world_info", "!!!notbase64"], "base64"),
    "not json": (["--world_info", b64("{nope")], "JSON"),
    "not an object": (["--world_info", b64("[1, 2]")], "JSON object"),
    "no hosts": (["--world_info", b64("{}")], "no hosts"),
    "empty slots": (["--world_info", b64('{"a": []}')], "no slots"),
    "duplicate slot": (["--world_info", b64('{"a": [1, 1]}')], "twice"),
    "duplicate host": (["--world_info", b64('{"a": [0], "a": [1]}')], "twice"),
    "non-integer slot": (["--world_info", b64('{"a": ["x"]}')], "integers"),
    "missing @file": (["--world_info", "@/nonexistent/world.json"], "cannot read"),
    "node_rank too big": (["--world_info", GOOD, "--node_rank", "2"], "node_rank"),
    "node_rank negative": (["--world_info", GOOD, "--node_rank", "-1"], "node_rank"),
    "node_rank not int": (["--node_rank", "one"], "node_rank"),
    "port zero": (["--master_port", "0"], "master_port"),
    "port too big": (["--world_info", GOOD, "--master_port", "70000"], "master_port"),
    "unknown flag": (["--frobnicate"], "unknown launcher flag"),
    "prefix of a flag": (["--node", "1"], "unknown launcher flag"),
    "bad adapter": (["--adapter", "nosuch"], "adapter"),
    "bad log level": (["--log_level", "chatty"], "log_level"),
    "negative kill timeout": (["--kill_timeout", "-1"], "kill_timeout"),
    "stall timeout not a number": (["--stall_timeout", "soon"], "stall_timeout"),
    "negative stall timeout": (["--stall_timeout", "-5"], "stall_timeout"),
    "zero workers": (["--nproc_per_node", "0"], "nproc_per_node"),
    "module and no_python": (["--module", "--no_python"], "exclude"),
    "bad core list": (["--bind_cores_to_rank", "--bind_core_list", "3-1"], "bind_core_list"),
    "more workers than cores": (
        ["--bind_cores_to_rank", "--bind_core_list", "0", "--nproc_per_node", "2"],
        "core per worker",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(name: str, marker_script: Path) -> None:
    flags, fragment = CASES[name]
    result = run_launcher(*flags, str(marker_script))
    assert result.returncode == 2, result.stderr
    assert fragment in error_line(result.stderr)
    assert result.stdout == ""
    assert not (marker_script.parent / "spawned").exists()


def test_missing_script(tmp_path: Path) -> None:
    result = run_launcher(str(tmp_path / "nope.py"))
    assert result.returncode == 2
    assert "not found" in error_line(result.stderr)


def test_no_script_at_all() -> None:
    result = run_launcher("--nproc_per_node", "2")
    assert result.returncode == 2
    assert "missing training script" in error_line(result.stderr)


def test_non_executable_no_python_target(tmp_path: Path) -> None:
    target = tmp_path / "tool.sh"
    target.write_text(f"#!/bin/sh\ntouch {tmp_path / 'spawned'}\n")
    target.chmod(0o644)
    result = run_launcher("--no_python", str(target))
    assert result.returncode == 2
    assert "not executable" in error_line(result.stderr)
    assert not (tmp_path / "spawned").exists()


def test_unwritable_log_dir(tmp_path: Path, marker_script: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    result = run_launcher("--enable_each_rank_log", str(blocker / "logs"), str(marker_script))
    assert result.returncode == 2
    assert "log" in error_line(result.stderr)
    assert not (tmp_path / "spawned").exists()


def test_symlinked_log_file_is_refused_not_followed(tmp_path: Path, marker_script: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # Plant symlinks for the timestamps this second and the next, whichever the launch takes.
    import time

    for offset in (0, 1, 2):
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() + offset))
        os.symlink(victim, logs / f"{stamp}_rank0.log")
    result = run_launcher("--enable_each_rank_log", str(logs), str(marker_script))
    assert result.returncode == 2
    assert "symlink" in error_line(result.stderr)
    assert victim.read_text() == "precious"
    assert not (tmp_path / "spawned").exists()


def test_symlinked_pid_file_is_refused(tmp_path: Path, marker_script: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "777.deepspeed")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = run_launcher("--save_pid", "777", str(marker_script), env=env)
    assert result.returncode == 2
    assert "PID file" in error_line(result.stderr)
    assert victim.read_text() == "precious"
    assert not (tmp_path / "spawned").exists()
    assert stat.S_ISLNK(os.lstat(tmp_path / "777.deepspeed").st_mode)


def test_deepspeed_runner_none_strings_mean_not_given(tmp_path: Path, marker_script: Path) -> None:
    result = run_launcher(
        "--world_info=None",
        "--enable_each_rank_log=None",
        "--log_level=info",
        "--dry-run",
        str(marker_script),
    )
    assert result.returncode == 0, result.stderr
    assert '"adapter": "local"' in result.stdout


def test_help_groups_flags_and_shows_examples() -> None:
    result = run_launcher("--help")
    assert result.returncode == 0
    for heading in ("world:", "process:", "logging:", "elastic:", "examples:"):
        assert heading in result.stdout
    assert "srun --ntasks-per-node=1 hpclaunch" in result.stdout
