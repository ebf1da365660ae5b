#!/bin/sh
# Install hpclaunch and torch==2.13.0 (CPU) into a Python that can take them, and print
# that Python's path on the last line. Usage: scripts/install.sh [--test]
#   --test   also the test tools (pytest, hypothesis, ruff, mypy), Slurm and both MPIs.
# Uses $PYTHON if set, else python3; when that Python is Debian's externally-managed one,
# a venv at <repo>/.venv is made and used instead. torch is pinned and installed first:
# an unpinned torch would pull a multi-GB CUDA build.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
say() { echo "install: $*" >&2; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >&2; }
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "no $PYTHON: installing python3"
    apt_install python3 python3-venv python3-pip
    PYTHON=python3
fi
PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
if [ -n "$("$PYTHON" -c 'import sysconfig, os; p = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"); print(p if os.path.exists(p) else "")')" ] \
    || ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    if [ ! -x "$ROOT/.venv/bin/python" ]; then
        say "making a venv at $ROOT/.venv"
        "$PYTHON" -m venv "$ROOT/.venv" 2>/dev/null || { apt_install python3-venv python3-pip; "$PYTHON" -m venv "$ROOT/.venv"; }
    fi
    PYTHON=$ROOT/.venv/bin/python
fi

pip() { "$PYTHON" -m pip install -q --disable-pip-version-check "$@" >&2; }
"$PYTHON" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
    || { say "installing torch==2.13.0"; pip torch==2.13.0; }
# torch's CPU wheel runs without numpy but warns on every worker's start; install it.
"$PYTHON" -c 'import numpy' 2>/dev/null || pip numpy

if [ "${1:-}" = "--test" ]; then
    [ -x /usr/bin/time ] || apt_install time  # GNU time: the benchmark smoke test's RSS rows
    pip -e "$ROOT[test]"
    PYTHON="$PYTHON" sh "$ROOT/scripts/install-slurm.sh" >&2
    PYTHON="$PYTHON" sh "$ROOT/scripts/install-mpi.sh" >&2
else
    pip -e "$ROOT"
fi
echo "$PYTHON"
