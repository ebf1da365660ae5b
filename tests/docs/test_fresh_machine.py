"""The README's test command on a fresh machine: nothing it runs writes the machine's shared
state, its leave-nothing check judges only what this run started, and the README's build
commands work where only ``python3`` exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from tests.conftest import ROOT

LEAVE_NOTHING = ROOT / "scripts" / "leave-nothing.py"

#: A call of the mount command (not ``umount``, ``unshare --mount``, ``--mount-proc`` or the
#: word in prose) followed by its options: in a shell line the command name, a space and a
#: dash option; in an argv list the quoted name, a comma and a quoted dash option.
_MOUNT_COMMAND = re.compile(r"""(?<![-\w])mount["']?,?\s+["']?-[^\n]*""")


def _tracked(*tops: str) -> List[Path]:
    listed = subprocess.run(["git", "ls-files", *tops], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    return [ROOT / name for name in listed]


def test_every_mount_the_tests_benchmarks_and_scripts_run_skips_the_mtab() -> None:
    # util-linux records a mount made without -n in /run/mount/utab: the machine's shared
    # /run, also from inside a private mount namespace. On a fresh machine that creates
    # /run/mount, which the test command's leave-nothing check then finds.
    found = []
    for path in _tracked("tests", "benchmarks", "scripts"):
        if path == Path(__file__).resolve():
            continue  # this file's own examples of what is looked for
        try:
            text = path.read_text()
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        for match in _MOUNT_COMMAND.finditer(text):
            options = re.split(r"""["'`,\s]+""", match.group(0))
            if "-n" not in options and "--no-mtab" not in options:
                found.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}")
    assert found == []


def _fake_daemon(tmp_path: Path, env: Dict[str, str]) -> subprocess.Popen[bytes]:
    """A process named ``hpclaunch`` (its comm), as a launch running on the machine is."""
    program = tmp_path / "bin" / "hpclaunch"
    program.parent.mkdir(exist_ok=True)
    if not program.exists():
        shutil.copy("/bin/sleep", program)
    return subprocess.Popen([str(program), "60"], env=env)


def _leave_nothing(
    command: str, state: Path, env: Dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LEAVE_NOTHING), command, str(state)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_leave_nothing_counts_only_processes_of_its_own_run(tmp_path: Path) -> None:
    # The check's temp-dir scan reads $TMPDIR: a directory of the test's own.
    (tmp_path / "tmp").mkdir()
    run = dict(os.environ, CI="true", TMPDIR=str(tmp_path / "tmp"),
               HPCLAUNCH_TEST_RUN=os.urandom(8).hex())
    elsewhere = {k: v for k, v in run.items() if k != "HPCLAUNCH_TEST_RUN"}
    state = tmp_path / "state.json"
    assert _leave_nothing("snapshot", state, run).returncode == 0
    # Someone else's launch on the machine, started during the run: not this run's doing.
    other = _fake_daemon(tmp_path, elsewhere)
    try:
        clean = _leave_nothing("check", state, run)
        ours = _fake_daemon(tmp_path, run)  # one this run started and left running
        try:
            dirty = _leave_nothing("check", state, run)
        finally:
            ours.kill()
            ours.wait()
    finally:
        other.kill()
        other.wait()
    assert clean.returncode == 0, clean.stderr
    assert "left nothing behind" in clean.stdout
    assert dirty.returncode == 1
    assert f"daemon: hpclaunch (pid {ours.pid}," in dirty.stderr
    assert str(other.pid) not in dirty.stderr


def test_the_readmes_build_commands_work_where_only_python3_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"`(python3? -m [^`]*)`", readme)
    assert any("pip wheel" in command for command in commands)
    # Debian's python3 package installs no `python` command: every command a user types
    # outside a venv must say python3.
    assert [c for c in commands if c.startswith("python -m") and "pip" in c] == []
    assert [c for c in commands if c.startswith("python -m build")] == []
    # `python3 -m build` needs a package that Python does not ship; pip wheel's leftovers
    # (build/) then stand in for it with a baffling message: the README must say both.
    assert "python3 -m pip install build" in readme
    assert "rm -rf build" in readme
