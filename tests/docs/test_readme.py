"""Every ``console`` block of the README runs, and prints what the README says it prints.

A block is a series of ``$ command`` lines, each followed by its expected output (stdout and
stderr together). Lines are compared in any order, since ranks print concurrently; ``...``
in an expected line stands for anything (host names, ports, PIDs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import List, Tuple

import pytest

from tests.conftest import ROOT

Example = Tuple[str, List[str]]


def console_examples(text: str) -> List[Example]:
    examples: List[Example] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], []))
            elif examples:
                examples[-1][1].append(line)
    return examples


EXAMPLES = console_examples((ROOT / "README.md").read_text())


def pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")) + r"\Z")


def test_the_readme_has_runnable_examples() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("command, expected", EXAMPLES, ids=[c[:60] for c, _ in EXAMPLES])
def test_readme_console_example(command: str, expected: List[str]) -> None:
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("NO_COLOR", None)
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    got = (result.stdout + result.stderr).splitlines()
    unmatched = list(got)
    for line in expected:
        regex = pattern(line)
        hit = next((g for g in unmatched if regex.match(g)), None)
        assert hit is not None, f"no output line matches {line!r}; got {got}"
        unmatched.remove(hit)
    assert unmatched == [], f"unexpected output: {unmatched}"
    if any(line.startswith("hpclaunch: error:") for line in expected):
        assert result.returncode == 2
    elif any("worker failed" in line for line in expected):
        assert result.returncode not in (0, 2)
    else:
        assert result.returncode == 0
