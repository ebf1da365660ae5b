"""Run one command line under real torchrun and under hpclaunch-torchrun, and compare what
their workers saw (tests/bin/record_env.py records argv, environment and interpreter).

torchrun itself is the oracle: ``python -m torch.distributed.run`` from this Python's torch
2.13. The comparison is strict: every variable torchrun's workers get must reach
hpclaunch's with the same value, except the few listed here with the reason, and
hpclaunch may add only its documented variables (docs/cli.md, "hpclaunch-torchrun").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence

from tests.conftest import BIN

RECORDER = str(BIN / "record_env.py")

#: torchrun's own bookkeeping, which hpclaunch does not set (documented).
TORCHRUN_ONLY = frozenset({"TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_SIGNALS_TO_HANDLE"})
#: hpclaunch's contract variables, added to torchrun's (documented).
HPCLAUNCH_ADDS = frozenset({"CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE", "PYTHONUNBUFFERED",
                            "HPCLAUNCH_TREE_TOKEN", "CUDA_VISIBLE_DEVICES"})
#: Elastic mode adds torch's knob for a fresh store per attempt (documented).
ELASTIC_ADDS = frozenset({"TORCH_DISABLE_SHARE_RDZV_TCP_STORE"})
#: The same variable with another value on purpose: hpclaunch's value (documented). In
#: elastic mode torch's agent sets it, False because of TORCH_DISABLE_SHARE_RDZV_TCP_STORE.
DIFFERENT = {"TORCHELASTIC_USE_AGENT_STORE": "False"}
#: Where each run's recorder writes: the harness's own variable.
HARNESS = frozenset({"REC_DIR"})
#: Values torchrun draws at random in its one-node forms: compared by presence only.
RANDOM = frozenset({"MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"})

Records = Dict[int, Dict[str, object]]


def base_env(tmp: Path) -> Dict[str, str]:
    """A small, known environment: this Python first on PATH, nothing of the caller's
    ``PET_*``, ``OMP_NUM_THREADS`` or ``PYTHONUNBUFFERED`` to blur the comparison."""
    bin_dir = os.path.dirname(sys.executable)
    return {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp")}


def torchrun_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def hpclaunch_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "hpclaunch.torchrun", *args]


def run_nodes(
    commands: Sequence[Sequence[str]],
    env: Mapping[str, str],
    out: Path,
    cwd: Optional[Path] = None,
    timeout: float = 180,
    node_envs: Sequence[Mapping[str, str]] = (),
) -> List[subprocess.CompletedProcess[str]]:
    """Start every node's launcher at once (as on a cluster), wait for all; records in out.
    ``node_envs[i]`` adds to node i's environment."""
    out.mkdir(parents=True, exist_ok=True)
    extra = list(node_envs) or [{} for _ in commands]
    procs = [subprocess.Popen(list(cmd), env=dict(env, REC_DIR=str(out), **more), cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, more in zip(commands, extra)]
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def records(out: Path) -> Records:
    found: Records = {}
    for path in out.glob("rank*.json"):
        found[int(path.stem[4:])] = json.loads(path.read_text())
    return found


def differences(
    torchrun: Records, hpclaunch: Records, random: FrozenSet[str] = frozenset(),
    elastic: bool = False,
) -> List[str]:
    """Every way hpclaunch's workers saw something else than torchrun's; [] when none."""
    found: List[str] = []
    if sorted(torchrun) != sorted(hpclaunch):
        return [f"ranks: torchrun {sorted(torchrun)}, hpclaunch {sorted(hpclaunch)}"]
    if not torchrun:
        return ["no worker recorded anything"]
    adds = HPCLAUNCH_ADDS | (ELASTIC_ADDS if elastic else frozenset())
    for rank in sorted(torchrun):
        theirs, ours = torchrun[rank], hpclaunch[rank]
        for key in ("argv", "executable", "name"):
            if theirs[key] != ours[key]:
                found.append(f"rank {rank} {key}: torchrun {theirs[key]!r}, "
                             f"hpclaunch {ours[key]!r}")
        their_env = theirs["env"]
        our_env = ours["env"]
        assert isinstance(their_env, dict) and isinstance(our_env, dict)
        for name, value in sorted(their_env.items()):
            if name in TORCHRUN_ONLY or name in HARNESS:
                continue
            if name not in our_env:
                found.append(f"rank {rank} {name}: torchrun {value!r}, hpclaunch unset")
            elif name in random:
                continue
            elif name in DIFFERENT:
                if our_env[name] != DIFFERENT[name]:
                    found.append(f"rank {rank} {name}: hpclaunch {our_env[name]!r}, documented "
                                 f"{DIFFERENT[name]!r}")
            elif our_env[name] != value:
                found.append(f"rank {rank} {name}: torchrun {value!r}, "
                             f"hpclaunch {our_env[name]!r}")
        for name in sorted(set(our_env) - set(their_env) - adds - HARNESS):
            found.append(f"rank {rank} {name}: hpclaunch {our_env[name]!r}, torchrun unset")
    return found
