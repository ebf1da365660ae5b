"""The wheel users install: built from a copy of this checkout, installed into a fresh venv,
and run by an unprivileged user who has nothing of this repository on its path.

Offline-friendly: the wheel is built with ``--no-build-isolation`` (setuptools is one of the
pinned test tools) and installed with ``--no-index`` from a folder that holds it and a psutil
wheel (taken from pip's cache or index once, by ``pip download``).
"""

from __future__ import annotations

import email.parser
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.conftest import ROOT, require

pytestmark = pytest.mark.timeout(600)

SKIP_IN_COPY = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".hypothesis",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", "results",
)


def run(argv: List[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A directory ``nobody`` can read (pytest's own tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="hpcl-wheel-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheel(shared_dir: Path) -> Path:
    source = shared_dir / "src"
    shutil.copytree(ROOT, source, ignore=SKIP_IN_COPY, symlinks=True)
    wheels = shared_dir / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(source)])
    shutil.rmtree(source)
    (built,) = wheels.glob("hpclaunch-*.whl")
    return built


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_the_wheel_holds_the_package_its_license_and_its_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        tops = {name.split("/")[0] for name in names}
        dist_info = next(top for top in tops if top.endswith(".dist-info"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert tops == {"hpclaunch", dist_info}, tops
    assert "hpclaunch/cli.py" in names and "hpclaunch/__main__.py" in names
    # The workers' stack-dump hook: a folder with no __init__.py, shipped all the same.
    assert "hpclaunch/spawner/worker_site/sitecustomize.py" in names
    assert f"{dist_info}/licenses/LICENSE" in names
    assert "[console_scripts]" in entry_points
    assert "hpclaunch = hpclaunch.__main__:main" in entry_points
    assert "hpclaunch-torchrun = hpclaunch.torchrun:main" in entry_points
    assert "hpclaunch/torchrun/__main__.py" in names
    assert "hpclaunch-report = hpclaunch.jobreport:main" in entry_points
    meta = metadata(wheel)
    assert meta["Name"] == "hpclaunch"
    assert meta["Requires-Python"] == ">=3.9"
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.startswith("psutil") and "extra" not in r for r in requires), requires
    assert {"mpi", "torch", "py-spy"} <= set(meta.get_all("Provides-Extra") or [])
    assert any(r.startswith("mpi4py") and 'extra == "mpi"' in r for r in requires)
    assert any(r.startswith("torch") and 'extra == "torch"' in r for r in requires)


def as_nobody(argv: List[str], home: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` as user nobody, with a bare environment and a cwd outside this checkout."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv],
        capture_output=True, text=True, timeout=120, env=env, cwd=str(home),
    )


def test_the_wheel_installs_into_a_fresh_venv_and_runs_unprivileged(
    wheel: Path, shared_dir: Path
) -> None:
    require(os.geteuid() == 0 and shutil.which("setpriv") is not None,
            "root and setpriv (util-linux), to run the installed wheel as nobody")
    wheels = wheel.parent
    import psutil

    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "-d", str(wheels), f"psutil=={psutil.__version__}"])
    venv = shared_dir / "venv"
    # No pip inside (ensurepip takes ~20 s here): this pip installs into the venv's python.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "-q", "--no-index", "--find-links", str(wheels), "hpclaunch"])
    home = shared_dir / "home"
    home.mkdir()
    home.chmod(0o1777 | stat.S_IRWXU)
    hpclaunch = str(venv / "bin" / "hpclaunch")

    where = as_nobody([str(venv / "bin" / "python"), "-c",
                       "import hpclaunch; print(hpclaunch.__file__)"], home)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv)), where.stdout

    version = as_nobody([hpclaunch, "--version"], home)
    assert version.returncode == 0, version.stderr
    assert metadata(wheel)["Version"] in version.stdout + version.stderr

    job = as_nobody([hpclaunch, "-q", "--nproc_per_node", "2", "--no_local_rank", "--no_python",
                     "/bin/sh", "-c", 'echo "uid $(id -u) rank $RANK of $WORLD_SIZE"'], home)
    assert job.returncode == 0, job.stderr
    nobody = run(["id", "-u", "nobody"]).stdout.strip()
    said = sorted(line.split(": ", 1)[-1] for line in job.stdout.splitlines())
    assert said == [f"uid {nobody} rank 0 of 2", f"uid {nobody} rank 1 of 2"], job.stdout

    torchrun = as_nobody([str(venv / "bin" / "hpclaunch-torchrun"), "--nproc-per-node", "2",
                          "--role", "r", "--no-python", "/bin/sh", "-c",
                          'echo "$ROLE_NAME rank $RANK of $WORLD_SIZE $OMP_NUM_THREADS"'], home)
    assert torchrun.returncode == 0, torchrun.stderr
    assert sorted(torchrun.stdout.splitlines()) == ["r rank 0 of 2 1", "r rank 1 of 2 1"]
    # Unprivileged, the installed hook still reaches the launcher's pipe (/proc/<pid>/fd).
    # The workers run the system's python3 (the one a venv of this machine's pyenv Python
    # points into is not for nobody to run), so the hook works in another interpreter too.
    script = home / "hangs.py"
    script.write_text("import signal\nprint('waiting', flush=True)\nsignal.pause()\n")
    stall = as_nobody([hpclaunch, "--nproc_per_node", "2", "--stall_timeout", "1",
                       "--kill_timeout", "1", "--no_python", "--no_local_rank", "/usr/bin/python3",
                       str(script)], home)
    assert stall.returncode == 124, stall.stderr
    for rank in (0, 1):
        assert f'[rank{rank}]:   File "{script}", line 3, in <module>' in stall.stderr
    # The job's record, written and read by the installed commands.
    recorded = as_nobody([hpclaunch, "-q", "--event_log", "events/{node_rank}.jsonl",
                          "--nproc_per_node", "1", "--no_python", "/bin/true"], home)
    assert recorded.returncode == 0, recorded.stderr
    story = as_nobody([str(venv / "bin" / "hpclaunch-report"), "events"], home)
    assert story.returncode == 0 and "outcome: succeeded" in story.stdout, story.stderr
