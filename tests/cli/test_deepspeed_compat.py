"""hpclaunch swapped in for ``python -u -m deepspeed.launcher.launch`` in the commands
DeepSpeed's runner builds (runner.py's local launch and the PDSH runner's per-node one)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import WORKER


def deepspeed_style(*flags: str) -> list[str]:
    """What the runner execs, with the module swapped: ``python -u -m hpclaunch ...``."""
    return [sys.executable, "-u", "-m", "hpclaunch", *flags]


def test_runner_local_command_with_every_optional_flag(tmp_path: Path) -> None:
    world = base64.urlsafe_b64encode(json.dumps({"localhost": [0, 1]}).encode()).decode()
    cores = sorted(os.sched_getaffinity(0))
    binding = ["--bind_cores_to_rank", f"--bind_core_list={cores[0]},{cores[-1]}"]
    cmd = deepspeed_style(
        f"--world_info={world}",
        "--master_addr=127.0.0.1",
        "--master_port=29611",
        "--no_local_rank",
        "--save_pid",
        str(os.getpid()),
        "--enable_each_rank_log=None",
        "--log_level=info",
        *(binding if len(cores) >= 2 else []),
        WORKER,
        "--env-out",
        str(tmp_path),
        "--user-arg",
        "x",
    )
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["argv"][1:] == ["--env-out", str(tmp_path), "--user-arg", "x"]
        assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert seen["env"]["MASTER_PORT"] == "29611"
    assert not (tmp_path / f"{os.getpid()}.deepspeed").exists()


def test_one_core_for_two_workers_is_refused_like_bad_input(tmp_path: Path) -> None:
    world = base64.urlsafe_b64encode(json.dumps({"localhost": [0, 1]}).encode()).decode()
    core = min(os.sched_getaffinity(0))
    cmd = deepspeed_style(
        f"--world_info={world}", "--bind_cores_to_rank", f"--bind_core_list={core}", WORKER
    )
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "core per worker" in refused.stderr


def test_pdsh_runner_per_node_command(tmp_path: Path) -> None:
    world = base64.urlsafe_b64encode(
        json.dumps({"worker-0": [0, 1], "worker-1": [0, 1]}).encode()
    ).decode()
    # PDSH substitutes %n with the node's index; this is node 1's command.
    cmd = deepspeed_style(
        f"--world_info={world}",
        "--node_rank=1",
        "--master_addr=worker-0",
        "--master_port=29500",
        "--module",
        "json.tool",
        "--help",
    )
    dry = subprocess.run([*cmd[:-2], "--dry-run", *cmd[-2:]], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert [w["rank"] for w in plan["workers"]] == [2, 3]
    assert plan["workers"][0]["argv"][1:] == ["-u", "-m", "json.tool", "--local_rank=0", "--help"]
