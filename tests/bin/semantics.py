"""What a script sees of its own start-up, written to ``--out`` as JSON: run once under
hpclaunch and once directly, the two reports must match (the dump hook aside).

Covers sys.argv, __main__, __file__, sys.path, PYTHONPATH and the environment, the
sitecustomize the environment provides, pickling a class defined here, multiprocessing with
the spawn start method, and a subprocess.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys


class Point:
    """Defined in the script: pickled by reference to ``__main__``."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def child_view(point: Point) -> dict:  # type: ignore[type-arg]
    """Runs in a spawned process, which re-imports this script as ``__mp_main__``."""
    return {
        "point": [point.x, point.y],
        "path": sys.path,
        "pythonpath": os.environ.get("PYTHONPATH"),
        "sitecustomize": getattr(sys.modules.get("sitecustomize"), "__file__", None),
        "hooked": dump_handler(),
    }


def dump_handler() -> bool:
    """Whether this process catches hpclaunch's dump signal (SIGRTMIN+7)."""
    with open("/proc/self/status") as handle:
        mask = next(line for line in handle if line.startswith("SigCgt:")).split()[1]
    return bool(int(mask, 16) >> (signal.SIGRTMIN + 7 - 1) & 1)


def main() -> None:
    fd_3_free = not os.path.exists("/proc/self/fd/3")  # before this script opens anything
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    point = pickle.loads(pickle.dumps(Point(3, 4)))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        spawned = pool.apply(child_view, (Point(5, 6),))
    probe = ("import json, os, sys; print(json.dumps([sys.path, os.environ.get('PYTHONPATH'), "
             "getattr(sys.modules.get('sitecustomize'), '__file__', None)]))")
    sub = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                    text=True, check=True).stdout)
    report = {
        "argv": sys.argv,
        "name": __name__,
        "file": __file__,
        "main_file": getattr(sys.modules["__main__"], "__file__", None),
        "path": sys.path,
        "pythonpath": os.environ.get("PYTHONPATH"),
        "hpclaunch_vars": sorted(k for k in os.environ if k.startswith("HPCLAUNCH_")
                                 and k != "HPCLAUNCH_TREE_TOKEN"),
        "sitecustomize": getattr(sys.modules.get("sitecustomize"), "__file__", None),
        "site_marker": getattr(sys, "user_site_marker", None),
        "pickled": [type(point).__module__, type(point).__qualname__, point.x, point.y],
        "spawned": spawned,
        "subprocess": sub,
        "hooked": dump_handler(),
        "fd_3_free": fd_3_free,
    }
    with open(args.out, "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
