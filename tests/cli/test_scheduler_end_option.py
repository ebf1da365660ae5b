"""``--no_scheduler_end`` / ``scheduler_end``: accepted as a flag (both spellings) and as the
API's keyword; anything but a bool is refused by the API before anything starts. What the
option does is tested on the real Slurm cluster (tests/slurm/test_scheduler_end.py)."""

from __future__ import annotations

from typing import Any

import pytest

import hpclaunch
from hpclaunch.errors import UsageError
from tests.conftest import WORKER, run_launcher


def two_rank_plan(**fields: Any) -> hpclaunch.LaunchPlan:
    world = hpclaunch.detect_world({}, nproc_per_node=2)
    return hpclaunch.plan(world, [WORKER], **fields)


@pytest.mark.parametrize("flag", ["--no_scheduler_end", "--no-scheduler-end"])
def test_the_flag_is_accepted_where_there_is_no_scheduler(flag: str) -> None:
    result = run_launcher(flag, "--nproc_per_node", "2", "--no_python", "/bin/true")
    assert result.returncode == 0, result.stderr
    assert "Slurm" not in result.stderr


@pytest.mark.parametrize("value", ["no", 0, None])
def test_the_api_refuses_a_value_that_is_not_a_bool(value: Any) -> None:
    with pytest.raises(UsageError, match=r"scheduler_end=.*: give True or False"):
        two_rank_plan(scheduler_end=value)
    with pytest.raises(UsageError, match=r"scheduler_end=.*: give True or False"):
        hpclaunch.launch(two_rank_plan(), scheduler_end=value)


def test_the_api_takes_the_keyword_and_the_options_object() -> None:
    assert two_rank_plan(scheduler_end=False).launch.scheduler_end is False
    options = hpclaunch.LaunchOptions(scheduler_end=False)
    assert two_rank_plan(launch=options).launch.scheduler_end is False
    assert two_rank_plan().launch.scheduler_end is True
