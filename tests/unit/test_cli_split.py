"""Launcher flags end at the script; nothing after it is ever taken by the launcher."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.cli import _option_table, build_parser, split_argv
from hpclaunch.errors import UsageError

TABLE = _option_table(build_parser())


@given(st.lists(st.text(min_size=0, max_size=12), max_size=8))
def test_script_args_are_untouched(script_args: list[str]) -> None:
    launcher, script, rest = split_argv(["--node_rank", "1", "train.py", *script_args], TABLE)
    assert launcher == ["--node_rank=1"]
    assert script == "train.py"
    assert rest == script_args


def test_script_args_that_look_like_launcher_flags_stay_with_the_script() -> None:
    argv = ["train.py", "--n", "4", "--node_rank", "3", "--dry-run"]
    assert split_argv(argv, TABLE) == ([], "train.py", argv[1:])


def test_values_that_start_with_a_dash_are_values() -> None:
    launcher, script, _ = split_argv(
        ["--world_info", "-AbC", "--min_elastic_nodes", "-1", "t.py"], TABLE
    )
    assert launcher == ["--world_info=-AbC", "--min_elastic_nodes=-1"]
    assert script == "t.py"


def test_double_dash_ends_launcher_flags() -> None:
    assert split_argv(["--module", "--", "-weird"], TABLE) == (["--module"], "-weird", [])


@pytest.mark.parametrize("argv", [["--node", "1", "t.py"], ["--nproc", "2", "t.py"], ["--bogus"]])
def test_prefixes_and_unknown_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(UsageError, match="unknown launcher flag"):
        split_argv(argv, TABLE)


def test_every_flag_has_its_dashed_alias() -> None:
    for option in list(TABLE):
        if option.startswith("--") and "_" in option:
            assert option.replace("_", "-") in TABLE
