"""Reading the stack dumps a launcher printed, for the stall and SIGQUIT tests.

A dump block is ``[rank<R>]: hpclaunch: stack of rank <R> (pid P, <why>): <state>`` and then
thread headers (``Thread 0x...``, ``Current thread 0x...``) each followed by its frames
(``  File "f.py", line 3, in func``), innermost last. :func:`stacks` turns a launcher's output
into rank -> list of dumps, each a header and its threads' frames, so tests assert on
frames, not on text positions.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Tuple

HANG = str(Path(__file__).resolve().parent / "bin" / "hang.py")

_PREFIX = re.compile(r"^\[rank(\d+)\]: (.*)$")
_FRAME = re.compile(r'^  File "(.*)", line (\d+), in (.*)$')
_HEADER = re.compile(r"^hpclaunch: stack of rank (\d+) ")


class Frame(NamedTuple):
    file: str
    line: int
    function: str


class Dump(NamedTuple):
    """One rank's dump: its header line and, per thread header, the frames (innermost last)."""

    header: str
    threads: Dict[str, List[Frame]]
    #: the other lines of the block (notes, py-spy's native frames)
    other: List[str]


def hang_line(name: str) -> int:
    """The line of ``tests/bin/hang.py`` marked ``# HANG: <name>``."""
    for number, text in enumerate(Path(HANG).read_text().splitlines(), start=1):
        if text.rstrip().endswith(f"# HANG: {name}"):
            return number
    raise AssertionError(f"no line marked '# HANG: {name}' in {HANG}")


def stacks(text: str) -> Dict[int, List[Dump]]:
    """rank -> its dumps, in the order they were printed (py-spy blocks left out).

    A one-rank world's lines have no prefix: they belong to the rank of the latest header.
    """
    dumps: Dict[int, List[Dump]] = {}
    current: Dict[int, Tuple[Dump, str]] = {}  # rank -> (dump being read, thread header)
    unprefixed = -1
    for line in text.splitlines():
        match = _PREFIX.match(line)
        header = _HEADER.match(line)
        if match is not None:
            rank, body = int(match[1]), match[2]
        elif header is not None:
            rank = unprefixed = int(header[1])
            body = line
        elif unprefixed >= 0:
            rank, body = unprefixed, line
        else:
            continue
        if body.startswith(f"hpclaunch: stack of rank {rank} "):
            dump = Dump(body, {}, [])
            dumps.setdefault(rank, []).append(dump)
            current[rank] = (dump, "")
            continue
        if body.startswith("hpclaunch: native stack"):
            current.pop(rank, None)
            continue
        if rank not in current:
            continue
        dump, thread = current[rank]
        frame = _FRAME.match(body)
        if body.startswith(("Thread ", "Current thread ")):
            dump.threads[body] = []
            current[rank] = (dump, body)
        elif frame is not None and thread:
            dump.threads[thread].append(Frame(frame[1], int(frame[2]), frame[3]))
        else:
            dump.other.append(body)
    return dumps


def innermost(dump: Dump) -> List[Frame]:
    """Each thread's innermost frame."""
    return [frames[-1] for frames in dump.threads.values() if frames]


def read_until(
    proc: subprocess.Popen[bytes], done: Callable[[str], bool], timeout: float = 60.0
) -> str:
    """Read the launcher's stderr (a pipe) until ``done(text so far)`` or the timeout."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    text = b""
    deadline = time.monotonic() + timeout
    while not done(text.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; the launcher said:\n{text.decode()}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the launcher ended; it said:\n{text.decode()}")
            text += chunk
    return text.decode(errors="replace")


def dumped(ranks: List[int]) -> Callable[[str], bool]:
    """``read_until``'s test: every rank in ``ranks`` has a dump with at least one frame."""

    def test(text: str) -> bool:
        found = stacks(text)
        return all(
            any(any(d.threads.values()) for d in found.get(rank, [])) for rank in ranks
        )

    return test
