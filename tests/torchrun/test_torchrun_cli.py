"""hpclaunch-torchrun's own behaviour: exit status, refusals, notes, console and log files,
the dry run of each form, and real torch.distributed jobs through its MASTER_ADDR/PORT."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.conftest import ALLREDUCE, WORKER, free_port
from tests.torchrun.helpers import (
    RECORDER,
    base_env,
    hpclaunch_cmd,
    records,
    run_nodes,
    torchrun_cmd,
)


def run(tmp_path: Path, *args: str, env: Optional[Dict[str, str]] = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "rec"
    out.mkdir(exist_ok=True)
    full = dict(base_env(tmp_path), REC_DIR=str(out), **(env or {}))
    return subprocess.run(hpclaunch_cmd(*args), env=full, capture_output=True, text=True,
                          timeout=timeout)


def test_exit_status_is_the_failing_workers_not_torchruns_1(
    tmp_path: Path, torch_available: None
) -> None:
    env = {"REC_EXIT": "3", "REC_EXIT_RANK": "1"}
    theirs = run_nodes([torchrun_cmd("--nproc-per-node", "2", RECORDER)],
                       dict(base_env(tmp_path), **env), tmp_path / "t")[0]
    ours = run(tmp_path, "--nproc-per-node", "2", RECORDER, env=env)
    assert theirs.returncode == 1  # torchrun's, whatever the worker's code
    assert ours.returncode == 3, ours.stderr
    assert "rank 1 (local_rank 1" in ours.stderr and "exited with code 3" in ours.stderr


@pytest.mark.parametrize(
    "args, env, says",
    [
        (["--redirects", "1", "--log-dir", "D"], {}, "--redirects 1: hpclaunch writes"),
        (["-r", "3"], {}, "--redirects 3 needs --log-dir DIR"),
        (["-r", "0:3,1:1", "--log-dir", "D"], {}, "--redirects 0:3,1:1"),
        (["--logs-specs", "mine"], {}, "--logs-specs mine"),
        (["--rdzv-backend", "etcd", "--rdzv-endpoint", "h:1"], {}, "--rdzv-backend etcd"),
        (["--nnodes", "1:2"], {}, "--nnodes 1:2 (MIN:MAX) needs a rendezvous"),
        (["--standalone", "--nnodes", "2"], {}, "--standalone runs one node"),
        (["--duplicate-stdout-filters", "loss"], {}, "--duplicate-stdout-filters"),
        (["--numa-binding", "core-complex"], {}, "--numa-binding core-complex"),
        (["--local-ranks-filter", "5", "--nproc-per-node", "2"], {},
         "local rank 5 is not on this node"),
        (["--rdzv-backend", "c10d"], {}, "needs --rdzv-endpoint"),
        (["--nproc-per-node", "gpu"], {"HPCLAUNCH_TOPOLOGY_ROOT": "/nonexistent"},
         "--nproc-per-node gpu: no GPU is visible"),
        (["--nproc-per-node", "lots"], {}, "--nproc-per-node 'lots'"),
        (["--nnodes", "2", "--node-rank", "2", "--master-port", "4000"], {},
         "node rank 2 is outside the 2 node"),
        (["--virtual-local-rank", "--max-restarts", "1"], {}, "--virtual-local-rank is"),
        ([], {"PET_STANDALONE": "yes"}, "PET_STANDALONE='yes'"),
        ([], {"PET_NNODES": "0"}, "--nnodes '0'"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_started(
    tmp_path: Path, args: List[str], env: Dict[str, str], says: str
) -> None:
    result = run(tmp_path, *args, RECORDER, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpclaunch: error: "), result.stderr
    assert says in lines[0]
    assert list((tmp_path / "rec").iterdir()) == []


def test_missing_script_and_no_python_with_module(tmp_path: Path) -> None:
    for args, says in ((["missing.py"], "training script 'missing.py' not found"),
                       (["--no-python", "-m", "x"], "--no-python and --module exclude")):
        result = run(tmp_path, *args)
        assert result.returncode == 2 and says in result.stderr


def test_accepted_flags_say_what_hpclaunch_does_instead(tmp_path: Path) -> None:
    result = run(tmp_path, "--dry-run", "--nproc-per-node", "2", "--monitor-interval", "5",
                 "--start-method", "fork", "--tee", "3", "--signals-to-handle", "SIGUSR1",
                 "--event-log-handler", "console", "--log-dir", "L", "--local-addr", "a",
                 "--rdzv-conf", "timeout=9", "--nnodes", "1", "--master-port",
                 str(free_port()), RECORDER)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("hpclaunch: --")]
    assert [n.split()[1] for n in notes] == [
        "--monitor-interval", "--start-method", "--event-log-handler", "--signals-to-handle",
        "--rdzv-conf", "--tee", "--log-dir", "--local-addr"]
    json.loads(result.stdout)


def test_loglevel_sets_the_launchers_level_as_torchruns(tmp_path: Path) -> None:
    quiet = run(tmp_path, "--dry-run", "--monitor-interval", "3", RECORDER,
                env={"LOGLEVEL": "WARNING"})
    assert quiet.returncode == 0 and quiet.stderr == ""
    bad = run(tmp_path, "--tee", "5", RECORDER, env={"LOGLEVEL": "WARNING"})
    assert bad.returncode == 2 and bad.stderr.startswith("hpclaunch: error: --tee '5'")


def test_dry_run_static_form(tmp_path: Path) -> None:
    port = free_port()
    result = run(tmp_path, "--dry-run", "--nnodes", "3", "--node-rank", "2", "--master-addr",
                 "10.1.1.1", "--master-port", str(port), "--nproc_per_node", "2", "--role", "w",
                 RECORDER, "--lr", "1")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["adapter"] == "torchrun" and shown["run_id"] == "none"
    assert (shown["node_rank"], shown["world_size"], shown["master_addr"]) == (2, 6, "10.1.1.1")
    assert [w["rank"] for w in shown["workers"]] == [4, 5]
    env = shown["workers"][1]["env"]
    assert (env["ROLE_NAME"], env["GROUP_RANK"], env["LOCAL_RANK"]) == ("w", "2", "1")
    assert shown["workers"][1]["argv"][-3:] == [RECORDER, "--lr", "1"]  # no --local_rank
    assert "elastic" not in shown


def test_dry_run_rendezvous_form_is_elastic_mode(tmp_path: Path) -> None:
    result = run(tmp_path, "--dry-run", "--nnodes", "2:4", "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", "node0.example", "--rdzv-id", "j", "--local-addr", "n1",
                 "--role", "trainer", "--rdzv-conf", "join_timeout=60", RECORDER)
    assert result.returncode == 0, result.stderr
    elastic = json.loads(result.stdout)["elastic"]
    assert (elastic["min_nodes"], elastic["max_nodes"], elastic["max_restarts"]) == (2, 4, 0)
    assert elastic["rendezvous"] == {"backend": "c10d", "endpoint": "node0.example:29400",
                                     "run_id": "j", "conf": {"join_timeout": "60"}}
    assert (elastic["role"], elastic["local_addr"]) == ("trainer", "n1")
    assert elastic["worker_argv"][-1] == RECORDER and "--local_rank" not in str(elastic)


def test_static_form_with_restarts_is_elastic_hosted_by_node_0(tmp_path: Path) -> None:
    port = free_port()
    for rank, hosts in ((0, "true"), (1, "false")):
        result = run(tmp_path, "--dry-run", "--nnodes", "2", "--node-rank", str(rank),
                     "--master-addr", "127.0.0.1", "--master-port", str(port),
                     "--max-restarts", "2", RECORDER)
        assert result.returncode == 0, result.stderr
        elastic = json.loads(result.stdout)["elastic"]
        assert elastic["rendezvous"]["endpoint"] == f"127.0.0.1:{port}"
        assert elastic["rendezvous"]["conf"] == {"is_host": hosts}
        assert (elastic["min_nodes"], elastic["max_nodes"]) == (2, 2)


def test_local_ranks_filter_shows_only_those_ranks(tmp_path: Path) -> None:
    result = run(tmp_path, "--nproc-per-node", "3", "--local-ranks-filter", "0,2", WORKER,
                 "--print", "hello")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["hello from rank 0", "hello from rank 2"]


def test_redirects_to_per_rank_logs(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = run(tmp_path, "--nproc-per-node", "2", "-r", "3", "--log-dir", str(logs), WORKER,
                 "--print", "into the log")
    assert result.returncode == 0, result.stderr
    assert "into the log" not in result.stdout
    files = sorted(logs.iterdir())
    assert [f.name.split("_")[-1] for f in files] == ["rank0.log", "rank1.log"]
    assert "into the log from rank 1" in files[1].read_text()


def test_shutdown_timeout_is_the_kill_timeout(tmp_path: Path) -> None:
    result = run(tmp_path, "--dry-run", RECORDER, env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "7"})
    assert result.returncode == 0
    flagged = run(tmp_path, "--dry-run", "--shutdown-timeout", "4", RECORDER,
                  env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "7"})
    assert flagged.returncode == 0
    # The plan carries no timeout; a TERM-ignoring worker shows it (integration tests of
    # --kill_timeout cover the mechanism): here only the value's parsing is at stake.
    bad = run(tmp_path, RECORDER, env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "soon"})
    assert bad.returncode == 2 and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT='soon'" in bad.stderr


def test_gloo_all_reduce_through_its_master(tmp_path: Path, torch_available: None) -> None:
    """MASTER_ADDR/MASTER_PORT as a worker uses them: a real gloo job, two "nodes" of the
    static form on this machine, and one --standalone node."""
    port = free_port()
    out = tmp_path / "two"
    nodes = [hpclaunch_cmd("--nnodes", "2", "--node-rank", str(rank), "--master-addr",
                           "127.0.0.1", "--master-port", str(port), ALLREDUCE, "--out", str(out))
             for rank in (0, 1)]
    for result in run_nodes(nodes, base_env(tmp_path), out, timeout=240):
        assert result.returncode == 0, result.stderr
    assert sorted(r["sum"] for r in records(out).values()) == [3.0, 3.0]
    alone = tmp_path / "alone"
    result = run_nodes([hpclaunch_cmd("--standalone", "--nproc-per-node", "2", ALLREDUCE,
                                      "--out", str(alone))], base_env(tmp_path), alone)[0]
    assert result.returncode == 0, result.stderr
    assert "all_reduce over 2 ranks (gloo): sum=3 expected=3 OK" in result.stdout
