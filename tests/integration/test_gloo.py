"""Real torch.distributed gloo all_reduce jobs: one node of 4, and two launchers as 2 nodes."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from tests.conftest import ALLREDUCE, free_port, launcher_cmd, run_launcher


def read_ranks(directory: Path) -> dict[int, dict]:  # type: ignore[type-arg]
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in directory.glob("rank*.json")}


def test_four_local_workers_all_reduce(torch_available: None, tmp_path: Path) -> None:
    result = run_launcher(
        "--nproc_per_node",
        "4",
        "--master_port",
        str(free_port()),
        ALLREDUCE,
        "--out",
        str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "all_reduce over 4 ranks (gloo): sum=10 expected=10 OK" in result.stdout
    ranks = read_ranks(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, record in ranks.items():
        assert record["sum"] == 10.0 and record["world_size"] == 4
        assert record["local_rank_arg"] == rank == int(record["env"]["LOCAL_RANK"])


def test_two_launchers_form_one_world_of_four(torch_available: None, tmp_path: Path) -> None:
    import subprocess

    info = base64.urlsafe_b64encode(json.dumps({"node0": [0, 1], "node1": [0, 1]}).encode())
    port = str(free_port())
    procs = [
        subprocess.Popen(
            launcher_cmd(
                "--world_info",
                info.decode(),
                "--node_rank",
                str(node),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                ALLREDUCE,
                "--out",
                str(tmp_path),
                "--backend",
                "gloo",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # explicit worlds list GPU ids; on a CPU box they are harmless
            env=dict(os.environ),
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ranks = read_ranks(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, record in ranks.items():
        assert record["sum"] == 10.0
        assert record["env"]["CROSS_RANK"] == str(rank // 2)
        assert record["env"]["LOCAL_RANK"] == str(rank % 2)
        assert record["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "sum=10 expected=10 OK" in outputs[0][0]
