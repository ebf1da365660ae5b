"""Elastic mode with real torch gloo jobs: restarts, node bounds, nodes leaving, teardown.

Every launcher here is a real ``python -m hpclaunch --enable_elastic_training`` running
torch's elastic agent with a c10d rendezvous on a free local port; workers are
``bin/elastic_job.py``. Tests act only on what workers report on a FIFO, and check
afterwards that every process they reported (workers, their daemons, the agent) is gone.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from hpclaunch.model.binding import share_cores
from tests.conftest import (
    Fifo,
    error_line,
    free_port,
    kill_all,
    launcher_cmd,
    run_launcher,
    start_launcher,
    survivors,
    wait_gone,
)

JOB = str(Path(__file__).resolve().parent / "bin" / "elastic_job.py")
ELASTIC = ("--enable_elastic_training", "--kill_timeout", "3")


def records(directory: Path) -> Dict[Tuple[int, int], dict]:  # type: ignore[type-arg]
    """(attempt, rank) -> what that worker wrote."""
    out = {}
    for path in directory.glob("attempt*_rank*.json"):
        match = re.fullmatch(r"attempt(-?\d+)_rank(\d+)\.json", path.name)
        assert match, path.name
        out[(int(match.group(1)), int(match.group(2)))] = json.loads(path.read_text())
    return out


def ready(lines: List[str]) -> List[Dict[str, int]]:
    """Parse ``ready <rank> <pid> <world> <restart> <agent>`` lines."""
    out = []
    for line in lines:
        parts = line.split()
        if parts[0] == "ready":
            rank, pid, world, restart, agent = (int(p) for p in parts[1:])
            out.append(
                {"rank": rank, "pid": pid, "world": world, "restart": restart, "agent": agent}
            )
    return out


def world_info(nodes: int, slots: int) -> str:
    mapping = {f"node{n}": list(range(slots)) for n in range(nodes)}
    return base64.urlsafe_b64encode(json.dumps(mapping).encode()).decode()


def node_launcher(
    node: int, port: int, tmp_path: Path, *job_flags: str, conf: str
) -> subprocess.Popen[str]:
    return start_launcher(
        *ELASTIC,
        "--world_info", world_info(2, 2),
        "--node_rank", str(node),
        "--master_addr", "127.0.0.1",
        "--master_port", str(port),
        "--min_elastic_nodes", "1",
        "--max_elastic_nodes", "2",
        "--rdzv_conf", conf,
        JOB, "--out", str(tmp_path), *job_flags,
    )


def test_failed_first_attempt_is_restarted_and_all_reduces(
    torch_available: None, tmp_path: Path
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs $HOME ${local_rank}"  # not expanded
    out.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = run_launcher(
        *ELASTIC,
        "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        "--enable_each_rank_log", str(logs),
        "--save_pid", "5151",
        "--bind_cores_to_rank",
        JOB, "--out", str(out), "--fail-rank", "1", "--echo", "$$x${local_rank}$HOME",
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    got = records(out)
    assert sorted(got) == [(1, 0), (1, 1)], "attempt 0 must fail before its all_reduce"
    shares = share_cores(sorted(os.sched_getaffinity(0)), 2)
    token = None
    for (_, rank), record in got.items():
        assert record["sum"] == 3.0 and record["world_size"] == 2
        env_seen = record["env"]
        assert record["local_rank_arg"] == rank == int(env_seen["LOCAL_RANK"])
        assert record["argv"][1] == f"--local_rank={rank}"
        assert record["argv"][-2:] == ["--echo", "$$x${local_rank}$HOME"]  # untouched
        assert env_seen["TORCHELASTIC_RESTART_COUNT"] == "1"
        assert env_seen["TORCHELASTIC_RUN_ID"].startswith("hpclaunch-")
        for contract, agent in (("CROSS_RANK", "GROUP_RANK"), ("CROSS_SIZE", "GROUP_WORLD_SIZE"),
                                ("LOCAL_SIZE", "LOCAL_WORLD_SIZE")):
            assert env_seen[contract] == env_seen[agent]
        assert env_seen["ROLE_RANK"] == env_seen["RANK"] == str(rank)
        assert env_seen["WORLD_SIZE"] == env_seen["ROLE_WORLD_SIZE"] == "2"
        assert record["affinity"] == list(shares[rank])
        assert env_seen["OMP_NUM_THREADS"] == str(len(shares[rank]))
        token = token or env_seen["HPCLAUNCH_TREE_TOKEN"]
        assert env_seen["HPCLAUNCH_TREE_TOKEN"] == token
    names = sorted(p.name for p in logs.iterdir())
    assert len(names) == 2 and all(re.fullmatch(r"\d{14}_rank[01]\.log", n) for n in names)
    rank1 = (logs / names[1]).read_text()
    assert "rank 1 fails on purpose (attempt 0)" in rank1  # appended across attempts
    assert "rank 1 sum=3 world=2 attempt=1" in rank1
    assert not (tmp_path / "5151.deepspeed").exists()


def test_exhausted_restarts_exit_with_the_failure_summary(
    torch_available: None, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    result = run_launcher(
        *ELASTIC,
        "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        "--max_restarts", "0",
        "--enable_each_rank_log", str(logs),
        JOB, "--out", str(tmp_path), "--fail-rank", "0", "--fail-code", "7",
        timeout=120,
    )
    assert result.returncode == 7, result.stderr
    err = result.stderr
    assert "worker failed: rank 0 (local_rank 0" in err and "exited with code 7" in err
    assert os.uname().nodename in err
    assert "gave up after 0 restart(s)" in err
    (log,) = logs.glob("*_rank0.log")
    assert f"log: {log}" in err
    assert "rank 0 fails on purpose (attempt 0)" in err.split("last ")[1]  # the tail


def test_a_worker_killed_by_a_signal_every_time_is_128_plus_signal(
    torch_available: None, tmp_path: Path
) -> None:
    result = run_launcher(
        *ELASTIC,
        "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        "--max_restarts", "1",
        JOB, "--out", str(tmp_path), "--fail-rank", "1", "--fail-always",
        "--fail-signal", str(int(signal.SIGKILL)),
        timeout=120,
    )
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    assert "rank 1 (local_rank 1" in result.stderr and "SIGKILL" in result.stderr
    assert "gave up after 1 restart(s)" in result.stderr
    assert result.stderr.count("rank 1 fails on purpose") == 2  # the first try and 1 restart


def test_a_rendezvous_that_never_fills_is_an_error(torch_available: None, tmp_path: Path) -> None:
    """Node 0 of a 2-node world alone, min 2 (the default -1): the join times out."""
    result = run_launcher(
        *ELASTIC,
        "--world_info", world_info(2, 1),
        "--node_rank", "0",
        "--master_port", str(free_port()),
        "--rdzv_conf", "join_timeout=2",
        JOB, "--out", str(tmp_path),
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "hpclaunch: elastic agent failed: RendezvousTimeoutError" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_while_waiting_for_other_nodes_ends_at_once(
    torch_available: None, tmp_path: Path
) -> None:
    """Node 0 of a 2-node world waits for node 1, which never comes; SIGTERM ends the wait."""
    port = free_port()
    proc = start_launcher(
        *ELASTIC,
        "--world_info", world_info(2, 1),
        "--node_rank", "0",
        "--master_port", str(port),
        JOB, "--out", str(tmp_path),
    )
    try:
        wait_for_listener(port)  # the agent hosts the rendezvous store: it is waiting now
        proc.send_signal(signal.SIGTERM)
        # A hang guard, not a time target: the rendezvous would wait 600 s for node 1.
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
    finally:
        kill_all([proc.pid])
    assert list(tmp_path.iterdir()) == []


def wait_for_listener(port: int, timeout: float = 60.0) -> None:
    """Until something accepts connections on the port (the signal itself; retried briefly)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_two_launchers_form_one_elastic_world_of_four(
    torch_available: None, tmp_path: Path
) -> None:
    port = free_port()
    procs = [node_launcher(n, port, tmp_path, conf="last_call_timeout=20") for n in (0, 1)]
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        kill_all(p.pid for p in procs)
    assert [p.returncode for p in procs] == [0, 0], outputs
    got = records(tmp_path)
    assert sorted(rank for _, rank in got) == [0, 1, 2, 3]
    groups = set()
    for record in got.values():
        assert record["sum"] == 10.0 and record["world_size"] == 4
        assert record["env"]["CROSS_SIZE"] == "2" and record["env"]["LOCAL_SIZE"] == "2"
        assert record["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"  # from the world, per node
        groups.add(record["env"]["CROSS_RANK"])
    assert groups == {"0", "1"}


def test_a_node_leaving_restarts_the_other_in_a_smaller_world(
    torch_available: None, tmp_path: Path
) -> None:
    fifo, stop = Fifo(tmp_path / "ready.fifo"), Fifo(tmp_path / "stop.fifo")
    port = free_port()
    # Short rendezvous settings: a dead node is noticed after 3 missed 2 s heartbeats (a
    # loaded 2-core machine delays a live agent's 1 s heartbeat past 2 misses), and a round
    # with at least min nodes completes 4 s after min is reached.
    conf = "last_call_timeout=4,keep_alive_interval=2,keep_alive_max_attempt=3"
    flags = ("--ready", fifo.path, "--stop", stop.path, "--train")
    procs = [node_launcher(n, port, tmp_path, *flags, conf=conf) for n in (0, 1)]
    pids: List[int] = []
    try:
        # A round may form before the other node arrives; the agent then restarts its
        # workers when it does, so wait for the world of 4 rather than the first world.
        full = wait_for_world(fifo, 4, min_restart=0)
        pids = [r["pid"] for r in full] + [r["agent"] for r in full]
        # The node that does not host the rendezvous store (node 1) leaves.
        leaving = procs[1]
        leaving.send_signal(signal.SIGTERM)
        _, err1 = leaving.communicate(timeout=60)
        assert leaving.returncode == 128 + signal.SIGTERM, err1
        # Lines from before the world of 4 were all read above: a world of 2 now is node 0
        # going on alone (its restart count is its own, so not comparable with node 1's).
        smaller = wait_for_world(fifo, 2, min_restart=0)
        assert sorted(r["rank"] for r in smaller) == [0, 1]
        os.write(stop.fd, b"x")  # end the training loop
        _, err0 = procs[0].communicate(timeout=60)
        assert procs[0].returncode == 0, err0
    except Exception as exc:
        kill_all(p.pid for p in procs)
        outputs = "".join(
            f"\n--- node {n} (exit {p.wait()}):\n{p.communicate()[1][-3000:]}"
            for n, p in enumerate(procs)
        )
        raise AssertionError(f"{exc}{outputs}") from exc
    finally:
        kill_all(p.pid for p in procs)
        fifo.close()
        stop.close()
    got = records(tmp_path)
    assert {r["rank"] for r in got.values() if r["world_size"] == 4} == {0, 1, 2, 3}
    small = [r for r in got.values() if r["world_size"] == 2]
    assert sorted(r["rank"] for r in small) == [0, 1]
    assert all(r["sum"] == 3.0 and r["env"]["CROSS_SIZE"] == "1" for r in small)
    assert all(r["sum"] == 10.0 for r in got.values() if r["world_size"] == 4)
    assert wait_gone(pids) == []


def test_a_node_joining_later_grows_the_world(torch_available: None, tmp_path: Path) -> None:
    """Node 0 starts alone (min 1) and trains in a world of 2; node 1 arrives, node 0's
    agent sees it waiting and restarts its workers into one world of 4."""
    fifo, stop = Fifo(tmp_path / "ready.fifo"), Fifo(tmp_path / "stop.fifo")
    port = free_port()
    conf = "last_call_timeout=1"
    flags = ("--ready", fifo.path, "--stop", stop.path, "--train")
    procs = [node_launcher(0, port, tmp_path, *flags, conf=conf)]
    try:
        alone = wait_for_world(fifo, 2, min_restart=0)
        assert sorted(r["rank"] for r in alone) == [0, 1]
        procs.append(node_launcher(1, port, tmp_path, *flags, conf=conf))
        full = wait_for_world(fifo, 4, min_restart=0)
        assert sorted(r["rank"] for r in full) == [0, 1, 2, 3]
        os.write(stop.fd, b"x")  # one rank reads it; a MAX all_reduce stops all four
        outputs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
    except Exception as exc:
        kill_all(p.pid for p in procs)
        outputs = [p.communicate() for p in procs]
        raise AssertionError(f"{exc}{[o[1][-3000:] for o in outputs]}") from exc
    finally:
        kill_all(p.pid for p in procs)
        fifo.close()
        stop.close()
    got = records(tmp_path)
    assert all(r["sum"] == (3.0 if r["world_size"] == 2 else 10.0) for r in got.values())
    assert {r["env"]["CROSS_SIZE"] for r in got.values() if r["world_size"] == 4} == {"2"}


def wait_for_world(fifo: Fifo, size: int, min_restart: int) -> List[Dict[str, int]]:
    """Read ready lines until every rank of a world of ``size`` (from a late enough attempt)
    has reported; lines of other worlds (a round that formed early) are skipped."""
    seen: Dict[int, Dict[str, int]] = {}
    while len(seen) < size:
        for r in ready(fifo.expect(1, timeout=120)):
            if r["world"] == size and r["restart"] >= min_restart:
                seen[r["rank"]] = r
    return list(seen.values())


def start_training(
    fifo: Fifo, tmp_path: Path, *launcher_flags: str, job_flags: Tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    """Two workers in a training loop, each having left a setsid'd daemon behind."""
    return start_launcher(
        *ELASTIC,
        "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        *launcher_flags,
        JOB, "--out", str(tmp_path), "--ready", fifo.path, "--train",
        "--daemon", *job_flags,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )


def reported_pids(lines: List[str]) -> List[int]:
    """Workers, their daemons and the agent (a worker's parent)."""
    pids = []
    for line in lines:
        parts = line.split()
        pids.append(int(parts[2]))
        if parts[0] == "ready":
            pids.append(int(parts[5]))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_fatal_signal_tears_everything_down(
    torch_available: None, tmp_path: Path, fifo: Fifo, sig: int
) -> None:
    proc = start_training(fifo, tmp_path, "--save_pid", "6161")
    pids = reported_pids(fifo.expect(4, timeout=120))
    try:
        assert (tmp_path / "6161.deepspeed").read_text() == str(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, err
        assert survivors(pids) == []
        assert not (tmp_path / "6161.deepspeed").exists()
    finally:
        kill_all(pids)


def test_usr1_is_forwarded_to_the_workers_and_the_job_goes_on(
    torch_available: None, tmp_path: Path, fifo: Fifo
) -> None:
    stop = Fifo(tmp_path / "stop.fifo")
    proc = start_training(fifo, tmp_path, job_flags=("--stop", stop.path, "--on-usr1"))
    pids = reported_pids(fifo.expect(4, timeout=120))
    try:
        proc.send_signal(signal.SIGUSR1)
        got = sorted(line.split()[:2] for line in fifo.expect(2))
        assert got == [["usr1", "0"], ["usr1", "1"]]
        os.write(stop.fd, b"x")  # end the training loop: the job succeeds
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "forwarded SIGUSR1 to 2 worker(s)" in err
        assert survivors(pids) == []  # the daemons too: stopped once the job was done
    finally:
        kill_all(pids)
        stop.close()


def test_kill_9_of_the_launcher_leaves_nothing(
    torch_available: None, tmp_path: Path, fifo: Fifo
) -> None:
    proc = start_training(fifo, tmp_path, "--save_pid", "7171")
    pids = reported_pids(fifo.expect(4, timeout=120))
    try:
        proc.kill()
        proc.wait()
        assert wait_gone(pids) == []  # pdeathsig (agent, workers) and the watchdog (daemons)
        deadline = time.monotonic() + 10
        while (tmp_path / "7171.deepspeed").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # confirming an outcome, not ordering events
        assert not (tmp_path / "7171.deepspeed").exists()
    finally:
        kill_all(pids)


def test_an_agent_that_dies_takes_its_workers_and_the_job_with_it(
    torch_available: None, tmp_path: Path, fifo: Fifo
) -> None:
    proc = start_training(fifo, tmp_path)
    lines = fifo.expect(4, timeout=120)
    pids = reported_pids(lines)
    try:
        (agent,) = {r["agent"] for r in ready(lines)}
        os.kill(agent, signal.SIGKILL)  # say, the OOM killer
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGKILL, err
        assert "the elastic agent was killed by SIGKILL" in err
        assert wait_gone(pids) == []  # workers by pdeathsig, daemons by the launcher
    finally:
        kill_all(pids)


def test_the_agent_and_workers_hold_none_of_the_launcher_s_fds(
    torch_available: None, tmp_path: Path, fifo: Fifo
) -> None:
    """An fd the launcher inherited (an MPI process manager's pipe, say) stays with it."""
    read_end, write_end = os.pipe()
    stop = Fifo(tmp_path / "stop.fifo")
    proc = subprocess.Popen(
        launcher_cmd(
            *ELASTIC, "--nproc_per_node", "2", "--master_port", str(free_port()),
            JOB, "--out", str(tmp_path), "--ready", fifo.path, "--stop", stop.path, "--train",
        ),
        pass_fds=(write_end,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(write_end)
    try:
        lines = ready(fifo.expect(2, timeout=120))
        pipe = f"pipe:[{os.fstat(read_end).st_ino}]"
        holders = []
        for pid in {r["agent"] for r in lines} | {r["pid"] for r in lines}:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == pipe:
                        holders.append(pid)
                except OSError:
                    pass
        assert holders == []
        os.write(stop.fd, b"x")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        kill_all([proc.pid])
        os.close(read_end)
        stop.close()


def test_dry_run_shows_the_elastic_setup_without_torch_or_spawning(tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('the launcher imported torch')\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    result = run_launcher(
        "--enable_elastic_training", "--dry-run",
        "--world_info", world_info(3, 2), "--node_rank", "1", "--master_addr", "10.0.0.1",
        "--master_port", "29999", "--min_elastic_nodes", "2", "--rdzv_conf", "join_timeout=60",
        JOB, "--out", str(tmp_path), "--echo", "$x",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    elastic = shown["elastic"]
    assert (elastic["min_nodes"], elastic["max_nodes"], elastic["max_restarts"]) == (2, 3, 3)
    assert elastic["rendezvous"]["endpoint"] == "10.0.0.1:29999"
    assert elastic["rendezvous"]["run_id"] == shown["run_id"]
    assert elastic["rendezvous"]["conf"] == {"join_timeout": "60", "is_host": "false"}
    assert "--local_rank=${local_rank}" in elastic["worker_argv"]
    assert elastic["worker_argv"][-1] == "$$x"  # doubled for torch's Template pass
    assert len(shown["workers"]) == 2


@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--min_elastic_nodes", "0"), "--min_elastic_nodes 0 must be at least 1"),
        (("--min_elastic_nodes", "3", "--max_elastic_nodes", "2"), "below --min_elastic_nodes"),
        (("--max_restarts", "-1"), "--max_restarts -1 must be >= 0"),
        (("--rdzv_conf", "last_call=3"), "--rdzv_conf has a bad part 'last_call=3'"),
        (("--rdzv_conf", "join_timeout=soon"), "join_timeout='soon'"),
    ],
)
def test_bad_elastic_input_is_exit_2_and_spawns_nothing(
    tmp_path: Path, flags: Tuple[str, ...], needle: str
) -> None:
    result = run_launcher(
        "--enable_elastic_training", *flags, JOB, "--out", str(tmp_path), timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert needle in error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []
