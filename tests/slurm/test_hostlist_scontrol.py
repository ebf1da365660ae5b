"""Differential test: hpclaunch's hostlist expansion against Slurm's own ``scontrol``.

``scontrol show hostnames`` needs only a slurm.conf to read (no daemon), so this runs
without the test cluster. Expressions come from a seeded generator (tests/slurm/hostlist_gen.py):
the same few hundred every run, so a failure reproduces.
"""

from __future__ import annotations

import random
import subprocess
from typing import List, Optional

import pytest

from hpclaunch.errors import HostlistError
from hpclaunch.model.hostlist import expand_hostlist
from tests.slurm.hostlist_gen import invalid_expression, valid_expression

VALID = 300
INVALID = 100


@pytest.fixture(scope="module")
def scontrol_env(slurm_installed: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    conf = tmp_path_factory.mktemp("scontrol") / "slurm.conf"
    conf.write_text("ClusterName=hostlist\nSlurmctldHost=localhost\nNodeName=n1\n")
    return {"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}


def scontrol_hostnames(expression: str, env: dict) -> Optional[List[str]]:
    """Slurm's expansion, or None where Slurm calls the expression invalid.

    scontrol exits 0 even then; "Invalid hostlist" on its output is the signal.
    """
    result = subprocess.run(
        ["scontrol", "show", "hostnames", expression],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    if "Invalid hostlist" in result.stdout + result.stderr or result.returncode != 0:
        return None
    return result.stdout.split()


def ours(expression: str) -> Optional[List[str]]:
    try:
        return expand_hostlist(expression)
    except HostlistError:
        return None


def test_matches_scontrol_on_generated_expressions(scontrol_env: dict) -> None:
    rng = random.Random(20505)
    expressions = [valid_expression(rng) for _ in range(VALID)]
    expressions += [invalid_expression(rng) for _ in range(INVALID)]
    mismatches = []
    accepted = 0
    for expression in expressions:
        theirs = scontrol_hostnames(expression, scontrol_env)
        accepted += theirs is not None
        if ours(expression) != theirs:
            mismatches.append((expression, theirs and theirs[:6], (ours(expression) or [])[:6]))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:3]}"
    assert accepted >= VALID * 0.9  # the generator really exercises valid syntax


def test_large_list_matches_scontrol(scontrol_env: dict) -> None:
    expression = "r[01-40]n[001-250]"
    assert expand_hostlist(expression) == scontrol_hostnames(expression, scontrol_env)


def test_stated_facts(scontrol_env: dict) -> None:
    """The facts in shared/README.md, re-measured."""
    for expression in ["n[01-2]", "n[8-12]", "n[1-2],n1", "n[1-3]-ib[1-2]", "a[0-1]b[0-1]c[0-1]"]:
        assert expand_hostlist(expression) == scontrol_hostnames(expression, scontrol_env)
    assert scontrol_hostnames("n[1-2]x", scontrol_env) is None
