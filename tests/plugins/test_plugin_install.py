"""Adapter plug-ins for real: the example Grid Engine package installed with pip into a temporary
directory, found through its entry point and driven through the command line; broken
plug-ins as real dist-info directories.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from tests.conftest import ROOT, WORKER, run_launcher

EXAMPLE = ROOT / "examples" / "plugins" / "sge"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pip install --target`` of the example (from a copy: a build leaves files behind)."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "src"
    shutil.copytree(EXAMPLE, source)
    target = base / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--disable-pip-version-check", "--target", str(target),
         str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert (target / "hpclaunch_sge" / "__init__.py").is_file()
    yield target


def env_with(paths: List[Path], extra: Dict[str, str]) -> Dict[str, str]:
    """This checkout first (the code under test), then the plug-in directories."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PBS_", "LSB_", "PET_", "SLURM_", "OMPI_", "PMI", "MPI_"))
           and k not in ("JOB_ID", "PE_HOSTFILE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths)])
    env.update(extra)
    return env


def sge_job(tmp_path: Path, hosts: List[Tuple[str, int]]) -> Dict[str, str]:
    hostfile = tmp_path / "pe_hostfile"
    hostfile.write_text("".join(f"{h} {n} all.q@{h} UNDEFINED\n" for h, n in hosts))
    return {"JOB_ID": "4242", "SGE_TASK_ID": "undefined", "PE_HOSTFILE": str(hostfile),
            "PE": "mpi"}


def dry_run(env: Dict[str, str], *flags: str) -> Dict[str, object]:
    result = run_launcher(*flags, "--dry-run", WORKER, env=env)
    assert result.returncode == 0, result.stderr
    shown: Dict[str, object] = json.loads(result.stdout)
    return shown


def test_named_with_adapter_flag(site: Path, tmp_path: Path) -> None:
    me = socket.gethostname()
    env = env_with([site], sge_job(tmp_path, [("other-node", 1), (me, 1)]))
    shown = dry_run(env, "--adapter", "sge")
    assert shown["adapter"] == "sge"
    assert shown["world_info"] == {"other-node": [0], me: [0]}
    assert shown["node_rank"] == 1 and shown["master_addr"] == "other-node"
    assert shown["run_id"] == "sge-4242"


def test_found_by_auto_detection_after_the_builtins(site: Path, tmp_path: Path) -> None:
    me = socket.gethostname()
    env = env_with([site], sge_job(tmp_path, [(me, 2)]))
    shown = dry_run(env)
    assert shown["adapter"] == "sge" and shown["world_size"] == 2
    # Built-ins with their own evidence come first: --world_info means explicit.
    explicit = dry_run(env, "--world_info", "eyJhIjogWzBdfQ==")  # {"a": [0]}
    assert explicit["adapter"] == "explicit"
    # Outside a Grid Engine job the plug-in does not detect, and local remains the fallback.
    assert dry_run(env_with([site], {}))["adapter"] == "local"


def test_real_two_worker_run(site: Path, tmp_path: Path) -> None:
    me = socket.gethostname()
    env = env_with([site], sge_job(tmp_path, [(me, 2)]))  # two slots: two workers here
    out = tmp_path / "out"
    out.mkdir()
    result = run_launcher(WORKER, "--env-out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert "sge world: node 0/1" in result.stderr
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, record in enumerate(records):
        assert record["env"]["RANK"] == str(rank) and record["env"]["WORLD_SIZE"] == "2"
        assert record["env"]["TORCHELASTIC_RUN_ID"] == "sge-4242"
        assert record["env"]["MASTER_ADDR"] == me and record["env"]["MASTER_PORT"] == "33742"


def test_listed_in_help_and_choices(site: Path) -> None:
    env = env_with([site], {})
    shown = run_launcher("--help", env=env)
    builtins = "auto,explicit,slurm,pbs,lsf,mpi,kubeflow,torchrun,local"
    assert "{" + builtins + ",sge}" in shown.stdout
    wrong = run_launcher("--adapter", "sgf", WORKER, env=env)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().endswith("use one of " + builtins.replace(",", ", ") + ", sge")


def broken_dist(base: Path, name: str, target: str, module: str = "") -> Path:
    """A real installed-package layout: a dist-info with METADATA and entry_points.txt."""
    info = base / f"broken_{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: broken-{name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[hpclaunch.adapters]\n{name} = {target}\n")
    if module:
        (base / f"{target.split(':')[0]}.py").write_text(module)
    return base


@pytest.mark.parametrize(
    "target, module, why",
    [
        ("no_such_module:Adapter", "", "cannot be loaded (ModuleNotFoundError"),
        ("half_done:Adapter", "class Adapter:\n    name = 'half'\n"
         "    def detect(self, env):\n        return False\n",
         "is broken: it lacks world()"),
        ("raises:Adapter", "from hpclaunch import BaseAdapter\n"
         "class Adapter(BaseAdapter):\n    name = 'raises'\n"
         "    def detect(self, env):\n        raise KeyError('SGE_X')\n",
         "failed in detect() (KeyError: 'SGE_X')"),
    ],
)
def test_broken_plugin_is_one_line_naming_it(
    tmp_path: Path, target: str, module: str, why: str
) -> None:
    name = target.split(":")[0].split("_")[0] if target.startswith("no_") else (
        "half" if target.startswith("half") else "raises")
    base = broken_dist(tmp_path / "site", name, target, module)
    out = tmp_path / "out"
    out.mkdir()
    # Auto-detection reaches the plug-ins on a plain local launch: the broken one is named.
    result = run_launcher(WORKER, "--env-out", str(out), env=env_with([base], {}))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"hpclaunch: error: adapter plug-in '{name}' ({target}, from ")
    assert "broken_" in lines[0] and why in lines[0]
    assert list(out.iterdir()) == []  # nothing spawned


def test_a_plugin_cannot_take_a_builtin_name(tmp_path: Path) -> None:
    base = broken_dist(tmp_path / "site", "slurm", "fake:Adapter")
    result = run_launcher("--dry-run", WORKER, env=env_with([base], {}))
    assert result.returncode == 2
    assert "adapter plug-in 'slurm'" in result.stderr
    assert "takes the name of a built-in adapter" in result.stderr


def test_start_up_without_plugins_imports_no_metadata_machinery() -> None:
    """The plug-in lookup is a directory scan: importlib.metadata (~60 ms) is never loaded."""
    code = (
        "import sys, hpclaunch\n"
        "world = hpclaunch.detect_world({}, nproc_per_node=1)\n"
        "assert 'hpclaunch.adapters.plugins' in sys.modules  # the lookup did run\n"
        "print(sorted(m for m in sys.modules if m.startswith('importlib.metadata')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env_with([], {}), check=True)
    assert result.stdout.strip() == "[]"


MINIMAL = '''
from hpclaunch import Host, World


class Minimal:
    """Only what an adapter must have: no BaseAdapter, no notes/worker_environment/finish."""

    name = "minimal"

    def detect(self, env):
        return "MINIMAL_JOB" in env

    def world(self, env, options):
        return World((Host("here", (0, 1)),), 0, "127.0.0.1", options.master_port or 29511,
                     "minimal-" + env["MINIMAL_JOB"], gpu_slots=False)
'''


def test_a_plugin_with_only_name_detect_and_world_runs(tmp_path: Path) -> None:
    """Duck typing: the optional members take BaseAdapter's defaults when absent (the MPI
    identity of the launcher is still kept from the workers)."""
    base = broken_dist(tmp_path / "site", "minimal", "minimal_adapter:Minimal", MINIMAL)
    out = tmp_path / "out"
    out.mkdir()
    env = env_with([base], {"MINIMAL_JOB": "7", "PMIX_NAMESPACE": "launcher-ns"})
    result = run_launcher(WORKER, "--env-out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert "minimal world: node 0/1" in result.stderr
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["env"]["RANK"] for r in records] == ["0", "1"]
    assert all(r["env"]["TORCHELASTIC_RUN_ID"] == "minimal-7" for r in records)
    assert all("PMIX_NAMESPACE" not in r["env"] for r in records)
