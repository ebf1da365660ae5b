"""What real workers see: env and argv per the contract, and the dry run agreeing with it."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WORKER, run_launcher


def world_info(mapping: dict[str, list[int]]) -> str:
    return base64.urlsafe_b64encode(json.dumps(mapping).encode()).decode()


WORLDS = {
    "homogeneous": ({"a": [0, 1], "b": [0, 1]}, 1),
    "heterogeneous": ({"a": [0, 1, 2], "b": [0, 1, 2, 3]}, 1),
    "non-contiguous": ({"a": [2, 5], "b": [7]}, 0),
    "three nodes, last": ({"x": [0], "y": [3, 1], "z": [4, 6, 5]}, 2),
}


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_workers_env_and_argv_match_dry_run(name: str, tmp_path: Path) -> None:
    mapping, node_rank = WORLDS[name]
    flags = [
        "--world_info",
        world_info(mapping),
        "--node_rank",
        str(node_rank),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "29999",
    ]
    dry = run_launcher(*flags, "--dry-run", WORKER, "--env-out", str(tmp_path), "--n", "4")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    hosts = list(mapping)
    offset = sum(len(mapping[h]) for h in hosts[:node_rank])
    slots = mapping[hosts[node_rank]]
    assert plan["world_info"] == mapping
    assert plan["world_size"] == sum(len(v) for v in mapping.values())
    assert [w["rank"] for w in plan["workers"]] == list(range(offset, offset + len(slots)))

    real = run_launcher(*flags, WORKER, "--env-out", str(tmp_path), "--n", "4")
    assert real.returncode == 0, real.stderr
    for worker in plan["workers"]:
        seen = json.loads((tmp_path / f"rank{worker['rank']}.json").read_text())
        for key, value in worker["env"].items():
            assert seen["env"][key] == value, key
        assert seen["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, slots))
        assert seen["env"]["LOCAL_RANK"] == str(worker["local_rank"])
        assert seen["argv"][1:] == worker["argv"][3:]  # after python -u script
        assert seen["argv"][1] == f"--local_rank={worker['local_rank']}"
        assert seen["argv"][-2:] == ["--n", "4"]
    assert sorted(os.listdir(tmp_path)) == sorted(f"rank{w['rank']}.json" for w in plan["workers"])


def test_inherited_environment_passes_through(tmp_path: Path) -> None:
    env = dict(os.environ, HPCLAUNCH_TEST_PASSTHROUGH="kept")
    result = run_launcher("--nproc_per_node", "2", WORKER, "--env-out", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["env"]["HPCLAUNCH_TEST_PASSTHROUGH"] == "kept"
        assert seen["env"]["WORLD_SIZE"] == "2"


def test_no_local_rank_and_module_and_no_python(tmp_path: Path) -> None:
    result = run_launcher("--no_local_rank", WORKER, "--env-out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "rank0.json").read_text())
    assert not any(a.startswith("--local_rank") for a in seen["argv"])

    script = tmp_path / "tool.sh"
    script.write_text('#!/bin/sh\necho "$RANK $*" > "$(dirname "$0")/out.txt"\n')
    script.chmod(0o755)
    result = run_launcher("--no_python", str(script), "a b", "$(x);")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_text() == "0 --local_rank=0 a b $(x);\n"

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        f"import os, sys\nopen({str(tmp_path / 'mod.txt')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = run_launcher("--module", "pkg.mod", "x", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mod.txt").read_text() == "--local_rank=0 x"


def test_world_info_from_file_plain_json_and_base64(tmp_path: Path) -> None:
    mapping = {f"host{i}": list(range(8)) for i in range(300)}
    plain = tmp_path / "world.json"
    plain.write_text(json.dumps(mapping))
    encoded = tmp_path / "world.b64"
    encoded.write_text(world_info(mapping) + "\n")
    for path in (plain, encoded):
        result = run_launcher("--world_info", f"@{path}", "--node_rank", "299", "--dry-run", WORKER)
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert plan["world_size"] == 2400
        assert [w["rank"] for w in plan["workers"]] == list(range(2392, 2400))


def test_core_binding_pins_each_worker(tmp_path: Path) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    workers = min(2, len(allowed))
    script = tmp_path / "aff.py"
    script.write_text(
        "import os\n"
        f"open(os.path.join({str(tmp_path)!r}, 'cpu' + os.environ['RANK']), 'w')"
        ".write(','.join(map(str, sorted(os.sched_getaffinity(0)))))\n"
    )
    result = run_launcher(
        "--bind_cores_to_rank", "--nproc_per_node", str(workers), "--no_local_rank", str(script)
    )
    assert result.returncode == 0, result.stderr
    per = len(allowed) // workers
    for rank in range(workers):
        got = (tmp_path / f"cpu{rank}").read_text()
        assert got == ",".join(map(str, allowed[rank * per : (rank + 1) * per]))


def test_console_output_and_per_rank_logs(tmp_path: Path) -> None:
    result = run_launcher("--nproc_per_node", "2", WORKER, "--print", "hello")
    assert result.returncode == 0
    assert "hello from rank 0" in result.stdout and "hello from rank 1" in result.stdout
    assert "stderr line from rank 1" in result.stderr

    logs = tmp_path / "logs" / "nested"
    result = run_launcher(
        "--nproc_per_node", "2", "--enable_each_rank_log", str(logs), WORKER, "--print", "hello"
    )
    assert result.returncode == 0, result.stderr
    assert "hello from" not in result.stdout
    names = sorted(os.listdir(logs))
    assert len(names) == 2
    for rank, name in enumerate(names):
        stamp, _, tail = name.partition("_")
        assert len(stamp) == 14 and stamp.isdigit() and tail == f"rank{rank}.log"
        text = (logs / name).read_text()
        assert f"hello from rank {rank}" in text and f"stderr line from rank {rank}" in text
        assert oct(os.stat(logs / name).st_mode & 0o777) == oct(0o644)


def test_python_is_this_interpreter_unbuffered(tmp_path: Path) -> None:
    result = run_launcher("--dry-run", WORKER)
    argv = json.loads(result.stdout)["workers"][0]["argv"]
    assert argv[:2] == [sys.executable, "-u"]


def test_workers_start_with_default_signal_dispositions() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; a worker must not inherit that, nor a blocked mask.

    The worker is grep, not Python, since Python would ignore SIGPIPE again by itself.
    """
    result = run_launcher(
        "--no_local_rank", "--no_python", "grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"
    )
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":") for line in result.stdout.splitlines())
    ignored, blocked = int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1)) == 0
    assert ignored & (1 << (signal.SIGXFSZ - 1)) == 0
    assert blocked == 0


def test_exec_failure_is_reported_as_a_worker_failure(tmp_path: Path) -> None:
    # Executable, but neither a program nor a #! script: only exec itself can tell (a
    # missing #! interpreter is refused before anything starts, see tests/cli/test_messages).
    script = tmp_path / "bad.bin"
    script.write_bytes(b"\x7fELF but not really\n")
    script.chmod(0o755)
    result = run_launcher("--no_python", str(script))
    assert result.returncode == 127
    assert "cannot start" in result.stderr and "rank 0" in result.stderr
    assert "Exec format error" in result.stderr


def test_workers_get_only_stdin_stdout_stderr(tmp_path: Path) -> None:
    """A descriptor the launcher inherited (an open file) does not reach the workers."""
    with open(tmp_path / "held", "w") as held:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hpclaunch",
                "--no_local_rank",
                "--no_python",
                "ls",
                "/proc/self/fd",
            ],
            capture_output=True,
            text=True,
            pass_fds=(held.fileno(),),
        )
    assert result.returncode == 0, result.stderr
    assert sorted(int(fd) for fd in result.stdout.split()) == [0, 1, 2, 3]  # 3: ls's own dir fd
