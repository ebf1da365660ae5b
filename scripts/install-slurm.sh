#!/bin/sh
# Install what the Slurm tests (tests/slurm/) need: Debian's slurm-wlm daemons, client and
# munge. Idempotent: does nothing when every program is already there, and runs
# `apt-get update` only when the package lists are missing the packages. Needs root.
set -eu

PACKAGES="slurmctld slurmd slurm-client munge"
PROGRAMS="slurmctld slurmd srun sbatch scontrol munged mungekey"

missing=""
for program in $PROGRAMS; do
    if ! command -v "$program" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$program" ]; then
        missing="$missing $program"
    fi
done
if [ -z "$missing" ]; then
    echo "install-slurm: already installed"
    exit 0
fi
echo "install-slurm: missing$missing; installing $PACKAGES"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-slurm: must run as root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show $PACKAGES >/dev/null 2>&1; then
    apt-get update -q
fi
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $PACKAGES
