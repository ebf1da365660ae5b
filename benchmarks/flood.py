"""How much a flood of console output slows the workers, per output mode.

Each of N workers writes ``--mb`` MiB of 100-byte lines to stdout as fast as it can and
records how long its own writes took (the worker's view: does the launcher keep the pipe
drained?). Modes: ``--no_prefix`` (workers write straight to the launcher's stdout, the
floor), the default rank-prefixed relay, and ``--enable_each_rank_log`` (files). The
launcher's stdout goes to /dev/null, so the console itself is not what is measured.

    python benchmarks/flood.py [--mb 200] [--workers 2] [--reps 3]
    python benchmarks/flood.py --vs-sed [--mb 256] [--reps 5]

``--vs-sed`` is the performance issue's relay row: one stream of ``--mb`` MiB, the time the
worker's writes take when hpclaunch relays them with ``[rank0]: `` prefixes, against the
time they take when ``sed 's/^/[rank0]: /'`` reads them (the floor: a C filter doing the
same job). Both outputs go to /dev/null; runs alternate (A B A B), medians compared. The
launcher runs two ranks (a prefix needs a world of more than one) and rank 1 writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

WRITER = r"""
import os, sys, time, json
mb, out = int(sys.argv[1]), sys.argv[2]
line = b"x" * 99 + b"\n"
chunk = line * 10486  # ~1 MiB
start = time.perf_counter()
for _ in range(mb):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.flush()
elapsed = time.perf_counter() - start
with open(os.path.join(out, "rank" + os.environ["RANK"]), "w") as handle:
    json.dump({"seconds": elapsed}, handle)
"""

MODES = {
    "raw (--no_prefix)": ["--no_prefix"],
    "prefixed relay (default)": [],
    "per-rank log files": ["--enable_each_rank_log", "{logs}"],
}


def run_mode(flags: List[str], mb: int, workers: int) -> float:
    """Median over workers of their own write time, in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "writer.py")
        with open(script, "w") as handle:
            handle.write(WRITER)
        flags = [f.replace("{logs}", os.path.join(tmp, "logs")) for f in flags]
        with open(os.devnull, "wb") as devnull:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hpclaunch",
                    "--quiet",
                    "--nproc_per_node",
                    str(workers),
                    *flags,
                    "--no_local_rank",
                    script,
                    str(mb),
                    tmp,
                ],
                stdout=devnull,
                check=True,
            )
        times = [json.load(open(os.path.join(tmp, f"rank{r}")))["seconds"] for r in range(workers)]
        return statistics.median(times)


def one_stream_write_time(tmp: str, mb: int, under_launcher: bool) -> float:
    """The rank-0 writer's own write time, relayed by hpclaunch or read by sed."""
    script = os.path.join(tmp, "writer.py")
    with open(script, "w") as handle:
        handle.write("import os, sys\nif os.environ['RANK'] != '0': sys.exit(0)\n" + WRITER)
    with open(os.devnull, "wb") as devnull:
        if under_launcher:
            subprocess.run(
                [sys.executable, "-m", "hpclaunch", "--quiet", "--nproc_per_node", "2",
                 "--no_local_rank", script, str(mb), tmp],
                stdout=devnull, check=True,
            )
        else:
            writer = subprocess.Popen(
                [sys.executable, "-u", script, str(mb), tmp],
                stdout=subprocess.PIPE, env=dict(os.environ, RANK="0"),
            )
            subprocess.run(["sed", "s/^/[rank0]: /"], stdin=writer.stdout, stdout=devnull,
                           check=True)
            assert writer.stdout is not None
            writer.stdout.close()
            if writer.wait() != 0:
                raise RuntimeError("writer failed")
    with open(os.path.join(tmp, "rank0")) as handle:
        return float(json.load(handle)["seconds"])


def relay_vs_sed(mb: int, reps: int) -> None:
    times: Dict[str, List[float]] = {"sed": [], "hpclaunch": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps):
            times["sed"].append(one_stream_write_time(tmp, mb, False))
            times["hpclaunch"].append(one_stream_write_time(tmp, mb, True))
    sed, ours = statistics.median(times["sed"]), statistics.median(times["hpclaunch"])
    print(f"one stream, {mb} MiB of 100-byte lines, output -> /dev/null, {reps} reps A B A B\n")
    print("| reader | worker write time, s: median [min-max] | ratio to sed | target |")
    print("|---|---|---|---|")
    print(f"| sed 's/^/[rank0]: /' | {sed:.3f} [{min(times['sed']):.3f}-"
          f"{max(times['sed']):.3f}] | 1.00 | |")
    print(f"| hpclaunch (prefixed relay) | {ours:.3f} [{min(times['hpclaunch']):.3f}-"
          f"{max(times['hpclaunch']):.3f}] | {ours / sed:.2f} | <= 0.80 |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--vs-sed", action="store_true", help="the one-stream relay row")
    args = parser.parse_args()
    if args.vs_sed:
        relay_vs_sed(args.mb, args.reps)
        return
    results: Dict[str, List[float]] = {mode: [] for mode in MODES}
    for _ in range(args.reps):  # interleaved, so drift hits every mode alike
        for mode, flags in MODES.items():
            results[mode].append(run_mode(flags, args.mb, args.workers))
    print(
        f"{args.workers} workers x {args.mb} MiB each, launcher stdout -> /dev/null, "
        f"{args.reps} reps (median [min-max] of each worker's own write time)\n"
    )
    print("| output mode | worker write time, s | worker throughput, MiB/s |")
    print("|---|---|---|")
    for mode, times in results.items():
        med = statistics.median(times)
        print(f"| {mode} | {med:.3f} [{min(times):.3f}-{max(times):.3f}] | {args.mb / med:.0f} |")


if __name__ == "__main__":
    main()
