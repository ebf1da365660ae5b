#!/usr/bin/env python3
"""A worker that records what its launcher gave it: argv, environment, interpreter.

Writes ``$REC_DIR/rank<RANK>.json`` (atomically) and exits with ``$REC_EXIT`` (default 0).
Run as a script, as a module (``-m record_env`` with this directory on PYTHONPATH) or
executed directly (``--no-python``); it takes no arguments of its own, so the argv it
records is exactly what the launcher built.
"""

import json
import os
import sys


def main() -> None:
    record = {"argv": sys.argv, "env": dict(os.environ), "executable": sys.executable,
              "name": __name__}
    path = os.path.join(os.environ["REC_DIR"], f"rank{os.environ.get('RANK', 'unknown')}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".tmp", path)
    code = int(os.environ.get("REC_EXIT", "0"))
    if code and os.environ.get("REC_EXIT_RANK", os.environ.get("RANK")) == os.environ.get("RANK"):
        sys.exit(code)


if __name__ == "__main__":
    main()
