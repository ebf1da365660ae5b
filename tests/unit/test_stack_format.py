"""The launcher's rewriting of faulthandler's and py-spy's dumps: each thread's frames
innermost last, as a Python traceback reads. Fed with real faulthandler output."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading

from hpclaunch.spawner.stacks import pyspy_order, traceback_order


def real_dump(depth: int) -> str:
    """faulthandler's own dump of this process, from ``depth`` nested calls down."""
    read_end, write_end = os.pipe()
    started, stop = threading.Event(), threading.Event()

    def waiter() -> None:
        started.set()
        stop.wait()

    helper = threading.Thread(target=waiter)
    helper.start()
    started.wait()

    def nest(level: int) -> None:
        if level:
            nest(level - 1)
        else:
            faulthandler.dump_traceback(file=write_end, all_threads=True)

    try:
        nest(depth)
    finally:
        stop.set()
        helper.join()
        os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        return handle.read().decode()


def blocks(lines: list) -> dict:  # type: ignore[type-arg]
    """thread header -> its lines."""
    out: dict = {}  # type: ignore[type-arg]
    for line in lines:
        if line.startswith("  "):
            out[list(out)[-1]].append(line)
        else:
            out[line] = []
    return out


def test_each_thread_reads_innermost_last() -> None:
    threads = blocks(traceback_order(real_dump(3)))
    assert len(threads) >= 2 and all("(innermost frame last)" in h for h in threads)
    (current,) = [frames for h, frames in threads.items() if h.startswith("Current thread")]
    assert all(", in " in frame for frame in current)  # traceback's spelling: "line N, in f"
    names = [frame.rsplit(", in ", 1)[1] for frame in current]
    assert names[-6:] == ["test_each_thread_reads_innermost_last", "real_dump"] + ["nest"] * 4
    others = [frames for h, frames in threads.items() if not h.startswith("Current thread")]
    assert any(frames and frames[-1].endswith("in wait") and
               any(f.endswith("in waiter") for f in frames) for frames in others)


def test_a_stack_deeper_than_faulthandler_s_limit_starts_with_the_cut() -> None:
    """faulthandler writes 100 frames and ``...`` for the outer rest: that goes first."""
    lines = traceback_order(real_dump(150))
    start = next(i for i, line in enumerate(lines) if line.startswith("Current thread"))
    assert lines[start + 1] == "  ..."
    assert all(line.endswith("in nest") for line in lines[start + 2:start + 101])


def test_py_spy_threads_read_innermost_last() -> None:
    text = (
        "Process 7: python t.py\nPython v3.11.7 (/usr/bin/python3)\n\n"
        'Thread 7 (idle): "MainThread"\n    select (libc.so.6)\n    wait (t.py:5)\n'
        "    <module> (t.py:9)\n"
        'Thread 8 (active): "worker"\n    run (t.py:2)\n    _bootstrap (threading.py:1002)\n'
    )
    assert pyspy_order(text) == [
        "Process 7: python t.py", "Python v3.11.7 (/usr/bin/python3)",
        'Thread 7 (idle): "MainThread"', "    <module> (t.py:9)", "    wait (t.py:5)",
        "    select (libc.so.6)",
        'Thread 8 (active): "worker"', "    _bootstrap (threading.py:1002)", "    run (t.py:2)",
    ]
    assert sys.version_info >= (3, 9)
