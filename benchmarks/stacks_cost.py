"""What the stack-dump hook and ``--stall_timeout`` cost (issue 22's "Cost" bar).

    python benchmarks/stacks_cost.py [--reps 15]

Prints a markdown table; each A/B pair is measured interleaved (A B A B ...) on one machine,
so load drifts hit both sides alike:

* a Python worker's start-up: ``python -c pass`` plain, and with the hook on
  (``PYTHONPATH`` = hpclaunch's ``worker_site``, ``HPCLAUNCH_STACKS`` naming a real pipe),
  with the hook's .pyc (an installed wheel) and without (a checkout under
  ``PYTHONDONTWRITEBYTECODE=1``);
* a whole launch of 4 Python workers (``python -c pass``), default against
  ``--no_stack_dumps``: the launcher's pipes plus the workers' hook;
* relaying 64 MiB of output through the launcher, with and without ``--stall_timeout``
  (progress is stamped by the read made anyway: nothing per line);
* the launcher's wake-ups per second while 2 workers sleep: its voluntary context switches
  over 2 s, without ``--stall_timeout``, with 60 s (no more wake-ups than without) and
  with 1 s (one wake-up per half timeout).

Nothing is asserted: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
WORKER_SITE = ROOT / "hpclaunch" / "spawner" / "worker_site"
LAUNCHER = [sys.executable, "-m", "hpclaunch", "-q"]


def timed(argv: Sequence[str], env: Dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def interleaved(a: Callable[[], float], b: Callable[[], float], reps: int) -> Tuple[float, float]:
    """Medians of ``reps`` runs each, A and B alternating."""
    first: List[float] = []
    second: List[float] = []
    a(), b()  # warm the page cache and the .pyc files
    for _ in range(reps):
        first.append(a())
        second.append(b())
    return statistics.median(first), statistics.median(second)


def worker_start(reps: int, compiled: bool) -> Tuple[float, float]:
    """``compiled``: the hook's .pyc exists, as in an installed wheel (a checkout run with
    PYTHONDONTWRITEBYTECODE=1 compiles it at every start instead)."""
    import py_compile
    import shutil
    import tempfile

    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    read_end, write_end = os.pipe()
    with tempfile.TemporaryDirectory() as copy:
        site = Path(copy) / "worker_site"
        site.mkdir()
        shutil.copy(WORKER_SITE / "sitecustomize.py", site)
        if compiled:
            py_compile.compile(str(site / "sitecustomize.py"), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
        hooked = dict(plain, PYTHONPATH=str(site),
                      HPCLAUNCH_STACKS=f"41 /proc/{os.getpid()}/fd/{write_end}")
        try:
            argv = [sys.executable, "-c", "pass"]
            return interleaved(lambda: timed(argv, plain), lambda: timed(argv, hooked), reps)
        finally:
            os.close(read_end)
            os.close(write_end)


def launch(reps: int) -> Tuple[float, float]:
    job = ["--nproc_per_node", "4", "--no_python", "--no_local_rank", sys.executable, "-c",
           "pass"]
    env = dict(os.environ)
    return interleaved(lambda: timed([*LAUNCHER, "--no_stack_dumps", *job], env),
                       lambda: timed([*LAUNCHER, *job], env), reps)


def relay(reps: int) -> Tuple[float, float]:
    flood = ["--nproc_per_node", "2", "--no_python", "--no_local_rank", "/bin/sh", "-c",
             "head -c 33554432 /dev/zero | tr '\\0' x | fold -w 127"]
    env = dict(os.environ)
    return interleaved(lambda: timed([*LAUNCHER, *flood], env),
                       lambda: timed([*LAUNCHER, "--stall_timeout", "60", *flood], env),
                       max(3, reps // 3))


def wakeups(flags: Sequence[str]) -> float:
    """The launcher's voluntary context switches per second while its workers sleep."""
    proc = subprocess.Popen([*LAUNCHER, *flags, "--nproc_per_node", "2", "--no_python",
                             "--no_local_rank", "/bin/sleep", "4"], cwd=ROOT)
    try:
        time.sleep(1.0)  # past start-up
        before = _switches(proc.pid)
        time.sleep(2.0)
        return (_switches(proc.pid) - before) / 2.0
    finally:
        proc.wait()


def _switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise RuntimeError("no voluntary_ctxt_switches in /proc status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for compiled in (True, False):
        plain, hooked = worker_start(args.reps, compiled)
        rows.append(("Python worker start-up (`python -c pass`)", "plain", plain,
                     "hook on" + (" (.pyc)" if compiled else " (no .pyc)"), hooked))
    off, on = launch(args.reps)
    rows.append(("launch of 4 Python workers", "--no_stack_dumps", off, "default", on))
    without, with_stall = relay(args.reps)
    rows.append(("relay 2 x 32 MiB of lines", "default", without, "--stall_timeout 60",
                 with_stall))
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, medians of {args.reps}"
          " interleaved runs")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("(PYTHONDONTWRITEBYTECODE is set: the launch row's workers compile the hook)")
    print()
    print("| | A | A | B | B | B - A |")
    print("|---|---|---|---|---|---|")
    for label, a_name, a, b_name, b in rows:
        print(f"| {label} | {a_name} | {a * 1e3:.1f} ms | {b_name} | {b * 1e3:.1f} ms | "
              f"{(b - a) * 1e3:+.1f} ms |")
    print("\n| launcher wake-ups while 2 workers sleep | per second |")
    print("|---|---|")
    for flags in ([], ["--stall_timeout", "60"], ["--stall_timeout", "1"]):
        shown = " ".join(flags) or "default"
        print(f"| {shown} | {wakeups(flags):.1f} |")


if __name__ == "__main__":
    main()
