"""Files and processes that cannot be turned against the user (often root in containers)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from hpclaunch.world import MAX_WORLD_INFO_BYTES
from tests.conftest import ROOT, error_line, require, run_launcher

HOSTILE_NAMES = ["a 0", 'a"=0"', "a'; echo foo", "a\n0", "$(touch pwned)", "-rf"]


def test_no_shell_anywhere_in_the_package() -> None:
    for path in (ROOT / "hpclaunch").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                pytest.fail(f"{path}: shell= keyword")
            if isinstance(node, ast.Attribute) and node.attr in ("system", "popen"):
                if isinstance(node.value, ast.Name) and node.value.id == "os":
                    pytest.fail(f"{path}: os.{node.attr}")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_paths_and_args_reach_the_worker_literally(tmp_path: Path, name: str) -> None:
    base = tmp_path / name.replace("/", "_")
    base.mkdir()
    script = base / f"{name}.py"
    script.write_text(
        "import json, os, sys\n"
        "out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'argv.json')\n"
        "json.dump(sys.argv, open(out, 'w'))\n"
    )
    logs = base / f"logs {name}"
    result = run_launcher(
        "--enable_each_rank_log", str(logs), str(script), name, "--", "$HOME", cwd=str(base)
    )
    assert result.returncode == 0, result.stderr
    argv = json.loads((base / "argv.json").read_text())
    assert argv[1:] == ["--local_rank=0", name, "--", "$HOME"]
    assert len(list(logs.glob("*_rank0.log"))) == 1
    assert not (base / "pwned").exists() and not (Path.cwd() / "pwned").exists()


def test_foreign_owned_pid_file_is_refused(tmp_path: Path) -> None:
    require(os.getuid() == 0, "root (to make a file owned by another user)")
    planted = tmp_path / "99.deepspeed"
    planted.write_text("12345")
    os.chown(planted, 65534, 65534)
    script = tmp_path / "t.py"
    script.write_text(f"open({str(tmp_path / 'spawned')!r}, 'w')\n")
    result = run_launcher(
        "--save_pid", "99", str(script), env=dict(os.environ, TMPDIR=str(tmp_path))
    )
    assert result.returncode == 2
    assert "belongs to uid 65534" in error_line(result.stderr)
    assert planted.read_text() == "12345"
    assert not (tmp_path / "spawned").exists()


def test_stale_pid_file_of_our_own_is_replaced(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its PID names no process (a live one is refused: test_reliability)
    (tmp_path / "98.deepspeed").write_text(str(gone.pid))
    script = tmp_path / "t.py"
    script.write_text(
        f"import os\nopen({str(tmp_path / 'seen')!r}, 'w').write("
        f"open({str(tmp_path / '98.deepspeed')!r}).read())\n"
    )
    result = run_launcher(
        "--save_pid", "98", str(script), env=dict(os.environ, TMPDIR=str(tmp_path))
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seen").read_text() != str(gone.pid)
    assert not (tmp_path / "98.deepspeed").exists()


def test_world_info_file_is_size_limited(tmp_path: Path) -> None:
    huge = tmp_path / "world.json"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_WORLD_INFO_BYTES + 1)  # sparse: costs no disk
    script = tmp_path / "t.py"
    script.write_text("")
    result = run_launcher("--world_info", f"@{huge}", str(script))
    assert result.returncode == 2
    assert "larger than" in error_line(result.stderr)


def test_log_files_are_not_world_writable_even_with_a_permissive_umask(tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text("print('x')\n")
    env = dict(os.environ)
    old = os.umask(0)
    try:
        result = run_launcher(
            "--enable_each_rank_log", str(tmp_path / "logs"), str(script), env=env
        )
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for path in (tmp_path / "logs").iterdir():
        assert path.stat().st_mode & 0o022 == 0
