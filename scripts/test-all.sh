#!/bin/sh
# The one command that installs everything and runs every check: lint, types, all tests
# (unit, CLI, real spawning, real gloo, a real Slurm cluster, real OpenMPI and MPICH).
# Run as root on Debian 12 from anywhere; extra arguments go to pytest.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=$(sh "$ROOT/scripts/install.sh" --test | tail -n 1)
cd "$ROOT"
"$PYTHON" -m ruff check hpclaunch tests examples benchmarks
"$PYTHON" -m mypy
exec "$PYTHON" -m pytest "$@"
