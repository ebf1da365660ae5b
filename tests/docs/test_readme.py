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


# -- every path and link in the docs exists ------------------------------------------------

DOC_FILES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    + [p for p in (ROOT / "examples").rglob("*") if p.is_file() and p.suffix != ".pyc"]
)
#: A repository path as docs write it: a top-level folder, then a path (no spaces, no globs).
REPO_PATH = re.compile(
    r"(?<![\w./$-])((?:hpclaunch|tests|examples|scripts|docs|benchmarks|\.ci)/[\w.+/-]*[\w/])"
)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(markdown: str) -> List[str]:
    """GitHub's anchors for a file's headings: lower case, punctuation dropped, spaces -> -."""
    anchors = []
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.append(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def doc_references() -> List[Tuple[str, str]]:
    """(file, reference) for every repository path and relative link in the docs."""
    found = []
    for path in DOC_FILES:
        text = path.read_text(errors="replace")
        name = str(path.relative_to(ROOT))
        found.extend((name, f"path:{match}") for match in REPO_PATH.findall(text))
        if path.suffix == ".md":
            found.extend((name, f"link:{target}") for target in MARKDOWN_LINK.findall(text))
    return sorted(set(found))


def test_the_docs_reference_something() -> None:
    kinds = {reference.split(":", 1)[0] for _, reference in doc_references()}
    assert kinds == {"path", "link"}


@pytest.mark.parametrize("doc, reference", doc_references())
def test_every_path_and_link_in_the_docs_exists(doc: str, reference: str) -> None:
    kind, target = reference.split(":", 1)
    if kind == "path":
        assert (ROOT / target).exists(), f"{doc} names {target}, which is not in the repository"
        return
    if re.match(r"[a-z]+:", target):  # https:, mailto: ... are not the repository's
        return
    file_part, _, anchor = target.partition("#")
    resolved = (ROOT / doc).parent / file_part if file_part else ROOT / doc
    assert resolved.exists(), f"{doc} links to {target}: {resolved} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in heading_anchors(resolved.read_text()), f"{doc}: no #{anchor} in {target}"
