"""Every refusal lives in the API: each bad value, sent through the command line and through
``hpclaunch``'s Python API, is refused with the same one line and nothing is started.

The CLI side is a real ``python -m hpclaunch``; the API side calls the public functions in
this process. Both must give exactly the same message (the CLI adds ``hpclaunch: error: ``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

import hpclaunch
from hpclaunch.errors import UsageError
from tests.conftest import WORKER, error_line, run_launcher

TWO_RANKS = ["--nproc_per_node", "2"]


def two_rank_plan(**plan_fields: Any) -> hpclaunch.LaunchPlan:
    world = hpclaunch.detect_world({}, nproc_per_node=2)
    return hpclaunch.plan(world, [WORKER], **plan_fields)


def far_core() -> int:
    """A core id this launcher may not use (beyond every allowed one)."""
    return max(os.sched_getaffinity(0)) + 1


#: name -> (CLI flags before the script, the same values through the API)
CASES: Dict[str, Any] = {
    "negative kill_timeout": (
        ["--kill_timeout", "-5", *TWO_RANKS],
        lambda: hpclaunch.launch(two_rank_plan(), kill_timeout=-5),
    ),
    "nan kill_timeout": (
        ["--kill_timeout", "nan", *TWO_RANKS],
        lambda: hpclaunch.launch(two_rank_plan(), kill_timeout=math.nan),
    ),
    "kill_timeout in the plan": (
        ["--kill_timeout", "86401", *TWO_RANKS],
        lambda: two_rank_plan(kill_timeout=86401),
    ),
    "stall_timeout below a second": (
        ["--stall_timeout", "0.5", *TWO_RANKS],
        lambda: hpclaunch.launch(two_rank_plan(), stall_timeout=0.5),
    ),
    "nan stall_timeout": (
        ["--stall_timeout", "nan", *TWO_RANKS],
        lambda: hpclaunch.launch(two_rank_plan(), stall_timeout=math.nan),
    ),
    "stall_timeout in the plan": (
        ["--stall_timeout", "604801", *TWO_RANKS],
        lambda: two_rank_plan(stall_timeout=604801),
    ),
    "ranks_filter beyond the world": (
        ["--ranks_filter", "99", *TWO_RANKS],
        lambda: hpclaunch.launch(two_rank_plan(), ranks_filter={99}),
    ),
    "ranks_filter in the plan": (
        ["--ranks_filter", "1,7", *TWO_RANKS],
        lambda: two_rank_plan(ranks_filter=[1, 7]),
    ),
    "nproc_per_node 0": (
        ["--nproc_per_node", "0"],
        lambda: hpclaunch.detect_world({}, nproc_per_node=0),
    ),
    "master_port out of range": (
        ["--master_port", "70000"],
        lambda: hpclaunch.detect_world({}, master_port=70000),
    ),
    "negative node_rank": (
        ["--node_rank", "-1", "--world_info", "eyJhIjogWzBdfQ=="],
        lambda: hpclaunch.detect_world({}, node_rank=-1, world_info="eyJhIjogWzBdfQ=="),
    ),
    "numa binding and core binding": (
        ["--numa_binding", "node", "--bind_cores_to_rank", *TWO_RANKS],
        lambda: two_rank_plan(numa_binding="node", bind_cores=sorted(os.sched_getaffinity(0))),
    ),
    "cores this launcher may not use": (
        ["--bind_cores_to_rank", "--bind_core_list", str(far_core()), "--nproc_per_node", "1"],
        lambda: hpclaunch.plan(hpclaunch.detect_world({}, nproc_per_node=1), [WORKER],
                               bind_cores=[far_core()]),
    ),
    "elastic max below min": (
        ["--enable_elastic_training", "--max_elastic_nodes", "0", *TWO_RANKS],
        lambda: two_rank_plan(elastic=hpclaunch.ElasticOptions(max_nodes=0)),
    ),
    "elastic rendezvous setting": (
        ["--enable_elastic_training", "--rdzv_conf", "join_timeout=soon", *TWO_RANKS],
        lambda: two_rank_plan(
            elastic=hpclaunch.ElasticOptions(rendezvous_conf="join_timeout=soon")),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_and_api_refuse_alike(name: str, tmp_path: Path) -> None:
    flags: List[str]
    call: Callable[[], object]
    flags, call = CASES[name]
    out = tmp_path / "out"
    out.mkdir()
    result = run_launcher(*flags, WORKER, "--env-out", str(out))
    assert result.returncode == 2, result.stderr
    cli_line = error_line(result.stderr)
    with pytest.raises(UsageError) as caught:
        call()
    assert cli_line == "hpclaunch: error: " + " ".join(str(caught.value).split())
    assert list(out.iterdir()) == []  # the CLI started nothing


def test_the_api_refuses_before_anything_starts(tmp_path: Path) -> None:
    """The review's case: a 2-rank world, a negative kill_timeout and a filter naming rank 99
    ran and exited 0 with all output hidden; now it is refused and no worker runs."""
    plan = hpclaunch.plan(hpclaunch.detect_world({}, nproc_per_node=2),
                          [WORKER, "--env-out", str(tmp_path)])
    with pytest.raises(UsageError, match="--kill_timeout -5|--ranks_filter 99"):
        hpclaunch.launch(plan, kill_timeout=-5, ranks_filter={99})
    with pytest.raises(UsageError, match="rank 99 is not in this world of 2"):
        hpclaunch.launch(plan, ranks_filter={99})
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_keyword_is_a_type_error() -> None:
    plan = two_rank_plan()
    with pytest.raises(TypeError, match="kill_timout"):
        hpclaunch.launch(plan, kill_timout=3)
    with pytest.raises(TypeError, match="nproc"):
        hpclaunch.detect_world({}, nproc=2)
