#!/bin/sh
# The one command that installs everything and runs every check: lint, types, all tests
# (unit, CLI, real spawning, real gloo, a real Slurm cluster, real OpenMPI and MPICH, the
# built wheel run by an unprivileged user), then the leave-nothing check: a snapshot of
# /etc/hosts, network namespaces and links, /etc/netns, /run, the temp dir and /dev/shm
# before the tests is compared with one after; anything new is listed, and under CI=true
# it fails the command. Run as root on Debian 12 from anywhere; extra arguments go to pytest.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=$(sh "$ROOT/scripts/install.sh" --test | tail -n 1)
cd "$ROOT"
"$PYTHON" -m ruff check hpclaunch tests examples benchmarks scripts
"$PYTHON" -m mypy

# Every process of this run inherits the token: the check lists only those (not, say, a launch
# someone else runs on the machine meanwhile).
HPCLAUNCH_TEST_RUN=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
export HPCLAUNCH_TEST_RUN
SNAPSHOT=$(mktemp)  # made before the first snapshot, removed after the check: not a leftover
trap 'rm -f "$SNAPSHOT"' EXIT
"$PYTHON" scripts/leave-nothing.py snapshot "$SNAPSHOT"
status=0
"$PYTHON" -m pytest "$@" || status=$?
"$PYTHON" scripts/leave-nothing.py check "$SNAPSHOT" || { [ "$status" -ne 0 ] || status=1; }
exit "$status"
