"""Expand a Slurm hostlist from a file with hpclaunch and print one host per line, as
``scontrol show hostnames`` does; the expansion's own time (in-process, ns) goes to stderr.

    python hostlist_expand.py EXPRESSION_FILE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpclaunch.model.hostlist import expand_hostlist  # noqa: E402


def main() -> None:
    expression = Path(sys.argv[1]).read_text()
    started = time.perf_counter_ns()
    hosts = expand_hostlist(expression)
    took = time.perf_counter_ns() - started
    sys.stdout.write("\n".join(hosts) + "\n")
    sys.stderr.write(f"expand_ns {took}\n")


if __name__ == "__main__":
    main()
