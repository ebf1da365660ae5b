"""Which launch a torchrun command line is (hpclaunch/torchrun/form.py), as torchrun's own
``run()`` decides it; and the Kubeflow elastic pod plain hpclaunch refuses, run here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from hpclaunch.errors import UsageError
from hpclaunch.torchrun.form import choose_form, uuid4
from hpclaunch.torchrun.parser import parse
from tests.torchrun.helpers import RECORDER, base_env, hpclaunch_cmd
from tests.unit.recorded_jobs import load_job


def form_of(argv: List[str], env: Optional[Dict[str, str]] = None) -> tuple:  # type: ignore[type-arg]
    form, _ = choose_form(parse([*argv, "t.py"], env or {}), "thishost")
    return form.kind, form.min_nodes, form.max_nodes, form.host, form.port


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ("local", 1, 1, "", 0)),  # torchrun's implicit standalone
        (["--standalone"], ("local", 1, 1, "", 0)),
        (["--master-addr", "a"], ("local", 1, 1, "", 0)),  # no port: still implicit
        (["--master-port", "4000"], ("static", 1, 1, "127.0.0.1", 4000)),
        (["--nnodes", "2", "--master-addr", "a"], ("static", 2, 2, "a", 29500)),
        (["--nnodes", "2", "--rdzv-endpoint", "b:7"], ("static", 2, 2, "b", 7)),
        (["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"],
         ("local", 1, 1, "localhost", 0)),  # torchtitan's one-node line
        (["--rdzv-backend", "c10d", "--rdzv-endpoint", "far:5", "--nnodes", "1:3"],
         ("rendezvous", 1, 3, "far", 5)),
        (["--rdzv-backend", "c10d", "--rdzv-endpoint", "far"], ("rendezvous", 1, 1, "far", 29400)),
    ],
)
def test_forms(argv: List[str], expected: tuple) -> None:  # type: ignore[type-arg]
    assert form_of(argv) == expected


def test_run_ids() -> None:
    standalone, _ = choose_form(parse(["--standalone", "t.py"], {}), "h")
    again, _ = choose_form(parse(["--standalone", "t.py"], {}), "h")
    assert len(standalone.run_id) == 36 and standalone.run_id != again.run_id
    static, _ = choose_form(parse(["--nnodes", "2", "t.py"], {}), "h")
    assert static.run_id == "none"  # torchrun's default --rdzv-id
    fresh = uuid4()
    assert fresh[14] == "4" and fresh[19] in "89ab"  # a version-4 UUID


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--nnodes", "1:2"], "needs a rendezvous"),
        (["--nnodes", "2:1"], "need 0 < MIN <= MAX"),
        (["--nnodes", "2", "--rdzv-endpoint", "b"], "the port is missing"),
        (["--rdzv-backend", "c10d", "--rdzv-endpoint", "far:0", "--nnodes", "2"], "port 0"),
    ],
)
def test_refused_forms(argv: List[str], says: str) -> None:
    with pytest.raises(UsageError, match=says):
        form_of(argv)


def test_kubeflow_elastic_pod_runs_in_elastic_mode(tmp_path: Path) -> None:
    """The PyTorchJob with an elasticPolicy that plain hpclaunch refuses: the same pod
    environment given to hpclaunch-torchrun is torchrun's rendezvous form."""
    job = load_job("kubeflow-pytorchjob-v1-elastic", tmp_path)
    env = dict(base_env(tmp_path), **job.env)
    result = subprocess.run(hpclaunch_cmd("--dry-run", RECORDER), env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    elastic = json.loads(result.stdout)["elastic"]
    assert (elastic["min_nodes"], elastic["max_nodes"], elastic["max_restarts"]) == (1, 4, 3)
    assert elastic["rendezvous"]["endpoint"] == "elastic-worker-0:23456"
    assert "is_host" not in elastic["rendezvous"]["conf"]  # torch decides, as under torchrun
