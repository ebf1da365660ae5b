"""Files and processes that cannot be turned against the user (often root in containers)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path
from typing import List

import pytest

from hpclaunch.model.world import MAX_WORLD_INFO_BYTES
from tests.conftest import ROOT, error_line, launcher_cmd, require, run_launcher

HOSTILE_NAMES = ["a 0", 'a"=0"', "a'; echo foo", "a\n0", "$(touch pwned)", "-rf"]


#: Functions that run a command line through a shell.
SHELL_FUNCTIONS = {
    ("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"), ("pty", "spawn"), ("commands", "getoutput"),
}
#: Programs that, exec'd, would interpret a string: any of these as a constant is a shell call.
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "csh", "/bin/sh", "/bin/bash", "/usr/bin/sh",
          "/usr/bin/bash", "/bin/dash", "/usr/bin/env"}


def shell_uses(source: str, name: str = "<string>") -> List[str]:
    """Every way ``source`` could run a shell: shell=, os.system & co. (however imported),
    and a shell program named as a constant (exec of /bin/sh -c ...)."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.keyword) and node.arg == "shell":
            found.append(f"{where}: shell= keyword")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in SHELL_FUNCTIONS:
                found.append(f"{where}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (node.module, alias.name) in SHELL_FUNCTIONS:
                    found.append(f"{where}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Constant) and node.value in SHELLS:
            found.append(f"{where}: shell program {node.value!r}")
    return found


@pytest.mark.parametrize(
    "planted",
    [
        "import subprocess\nsubprocess.run('x', shell=True)",
        "import os\nos.system('x')",
        "import os\nos.popen('x')",
        "import subprocess\nsubprocess.getoutput('x')",
        "import subprocess\nsubprocess.getstatusoutput('x')",
        "from os import system\nsystem('x')",
        "from subprocess import getoutput",
        "import os\nos.execv('/bin/sh', ['/bin/sh', '-c', 'x'])",
        "import subprocess\nsubprocess.run(['bash', '-c', 'x'])",
        "import os\nos.execvp('sh', ['sh', '-c', 'x'])",
    ],
)
def test_the_shell_scan_sees_every_way_in(planted: str) -> None:
    assert shell_uses(planted) != []


def test_no_shell_anywhere_in_the_package() -> None:
    found = []
    for path in sorted((ROOT / "hpclaunch").rglob("*.py")):
        found.extend(shell_uses(path.read_text(), str(path.relative_to(ROOT))))
    assert found == []


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


@pytest.mark.root
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
    launcher = subprocess.Popen(
        launcher_cmd("--save_pid", "98", str(script)),
        env=dict(os.environ, TMPDIR=str(tmp_path)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, stderr
    assert (tmp_path / "seen").read_text().strip() == str(launcher.pid)  # this launcher's PID
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
