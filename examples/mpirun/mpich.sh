#!/bin/sh
# The same job under MPICH's (or Intel MPI's) Hydra mpiexec: one hpclaunch per node (-ppn 1).
# Hydra forwards the environment to every node by default.
set -eu
cd "$(dirname "$0")/.."

mpiexec -f mpirun/hostfile.mpich -n 2 -ppn 1 hpclaunch allreduce.py

# CPU-only try-out:
#   mpiexec -f mpirun/hostfile.mpich -n 2 -ppn 1 hpclaunch --nproc_per_node 2 allreduce.py --backend gloo
