"""Elastic mode's pure parts (bounds, --rdzv_conf, the worker command) and the worker shim.

No torch here: the shim is run directly, as torch's agent would run it, on a tiny command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.errors import UsageError
from hpclaunch.model.elastic import (
    describe,
    node_bounds,
    parse_rendezvous_conf,
    worker_argv_template,
)
from hpclaunch.model.plan import Command, build_plan, log_file_name, worker_argv
from hpclaunch.model.world import Host, World
from hpclaunch.options import ElasticOptions, OutputOptions
from hpclaunch.spawner.elastic.agent import WORKER_SHIM, shim_argument


def world(nodes: int = 3, node_rank: int = 0, addr: str = "10.1.2.3") -> World:
    hosts = tuple(Host(f"n{i}", (0, 1)) for i in range(nodes))
    return World(hosts, node_rank, addr, 29400, "job-7")


@pytest.mark.parametrize(
    "lo, hi, want",
    [(-1, -1, (3, 3)), (1, -1, (1, 3)), (-1, 5, (3, 5)), (2, 4, (2, 4)), (1, 1, (1, 1))],
)
def test_node_bounds(lo: int, hi: int, want: tuple) -> None:  # type: ignore[type-arg]
    assert node_bounds(world(), lo, hi) == want


@pytest.mark.parametrize("lo, hi", [(0, 3), (-2, 3), (4, -1), (3, 2)])
def test_bad_node_bounds_name_the_flag(lo: int, hi: int) -> None:
    with pytest.raises(UsageError, match="elastic_nodes"):
        node_bounds(world(), lo, hi)


def test_rendezvous_conf() -> None:
    assert parse_rendezvous_conf(None) == {}
    assert parse_rendezvous_conf("None") == {}  # DeepSpeed's runner spelling of "not given"
    assert parse_rendezvous_conf(" join_timeout = 60 ,is_host=false") == {
        "join_timeout": "60",
        "is_host": "false",
    }


@pytest.mark.parametrize(
    "text", ["timeout=3", "join_timeout", "join_timeout=", "join_timeout=-1", "join_timeout=0",
             "join_timeout=1.5", "join_timeout=\u00b9", "is_host=maybe", "a=1,,b=2"]
)
def test_bad_rendezvous_conf(text: str) -> None:
    with pytest.raises(UsageError, match="--rdzv_conf"):
        parse_rendezvous_conf(text)


@given(st.lists(st.text(), max_size=5))
def test_template_pass_gives_back_every_argument(args: List[str]) -> None:
    """torch's agent runs string.Template over every argument: ours must survive it."""
    command = Command(script="/x/train.py", args=tuple(args), python="/usr/bin/python3")
    template = worker_argv_template(command)
    assert "--local_rank=${local_rank}" in template
    for local_rank in (0, 7):
        after = [Template(a).safe_substitute(local_rank=str(local_rank)) for a in template]
        assert tuple(after) == worker_argv(command, local_rank)


@pytest.mark.parametrize(
    "command, want",
    [
        (Command("/bin/t", ("a",), mode="exec"), ("/bin/t", "--local_rank=${local_rank}", "a")),
        (Command("pkg.mod", (), mode="module", python="/py"),
         ("/py", "-u", "-m", "pkg.mod", "--local_rank=${local_rank}")),
        (Command("t.py", ("--local_rank=0",), python="/py", pass_local_rank=False),
         ("/py", "-u", "t.py", "--local_rank=0")),
    ],
)
def test_worker_command_per_mode(command: Command, want: tuple) -> None:  # type: ignore[type-arg]
    assert worker_argv_template(command) == want


def test_describe_hosts_the_store_on_node_0_only() -> None:
    command = Command("t.py", python="/py")
    for node_rank, is_host in ((0, "true"), (2, "false")):
        plan = build_plan("explicit", world(node_rank=node_rank), command)
        shown = describe(plan, ElasticOptions())
        assert shown["rendezvous"]["conf"]["is_host"] == is_host
        assert shown["rendezvous"]["run_id"] == "job-7"
        assert shown["nproc_per_node"] == 2 and shown["max_restarts"] == 3
    plan = build_plan("explicit", world(addr="fe80::1"), command)
    assert describe(plan, ElasticOptions())["rendezvous"]["endpoint"] == "[fe80::1]:29400"


# -- the worker shim ----------------------------------------------------------------------


def log_path_parts(log_dir: Optional[str]) -> Optional[List[str]]:
    """The per-rank log name's parts, as a plan with these logs gives them to the shim."""
    if log_dir is None:
        return None
    output = OutputOptions(log_dir=log_dir, log_timestamp="20260101000000")
    parts = build_plan("explicit", world(), Command("t.py"), output).log_path_parts()
    return list(parts) if parts else None


def run_shim(
    tmp_path: Path,
    log_dir: Optional[str],
    agent: Optional[int] = None,
    rank: str = "5",
    command: Optional[List[str]] = None,
) -> subprocess.CompletedProcess[str]:
    config = {
        "agent": os.getpid() if agent is None else agent,
        "ranks": [{"env": {"FIXED": "zero"}, "cpus": None},
                  {"env": {"FIXED": "one"}, "cpus": [sorted(os.sched_getaffinity(0))[0]]}],
        "log_path": log_path_parts(log_dir),
    }
    env = dict(os.environ, RANK=rank, LOCAL_RANK="1", GROUP_RANK="2", GROUP_WORLD_SIZE="3",
               LOCAL_WORLD_SIZE="2")
    script = ("import json, os, sys; print(json.dumps({k: os.environ.get(k) for k in "
              "('CROSS_RANK', 'CROSS_SIZE', 'LOCAL_SIZE', 'FIXED')} | "
              "{'cpus': sorted(os.sched_getaffinity(0)), 'argv': sys.argv[1:]}))")
    return subprocess.run(
        [sys.executable, "-I", "-S", WORKER_SHIM, shim_argument(config), "--",
         *(command or [sys.executable, "-c", script, "$x"])],
        env=env, capture_output=True, text=True, timeout=30,
    )


def test_shim_sets_the_contract_variables_cores_and_log(tmp_path: Path) -> None:
    result = run_shim(tmp_path, str(tmp_path))
    assert result.returncode == 0, result.stderr
    (log,) = tmp_path.iterdir()
    assert log.name == log_file_name("20260101000000", 5)  # the plan's name for rank 5
    seen = json.loads(log.read_text())
    assert seen == {"CROSS_RANK": "2", "CROSS_SIZE": "3", "LOCAL_SIZE": "2", "FIXED": "one",
                    "cpus": [sorted(os.sched_getaffinity(0))[0]], "argv": ["$x"]}
    run_shim(tmp_path, str(tmp_path))  # a restarted worker appends to its log
    assert len(log.read_text().splitlines()) == 2


def test_shim_never_writes_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / log_file_name("20260101000000", 5)).symlink_to(target)
    result = run_shim(tmp_path, str(logs))
    assert result.returncode == 1
    assert "cannot open log file" in result.stderr
    assert target.read_text() == "keep\n"


def test_shim_of_a_dead_agent_starts_nothing(tmp_path: Path) -> None:
    result = run_shim(tmp_path, None, agent=1)  # its parent is not the agent it was made for
    assert result.returncode == 1 and result.stdout == ""


def test_shim_gives_the_worker_default_signal_dispositions(tmp_path: Path) -> None:
    """The shim is Python, which ignores SIGPIPE and SIGXFSZ; exec would keep that."""
    result = run_shim(tmp_path, None, command=["/bin/grep", "SigIgn", "/proc/self/status"])
    assert result.returncode == 0, result.stderr
    ignored = int(result.stdout.split()[1], 16)
    assert ignored & (1 << (13 - 1)) == 0 and ignored & (1 << (25 - 1)) == 0  # PIPE, XFSZ
