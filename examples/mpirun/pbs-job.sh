#!/bin/sh
# PBS Pro / OpenPBS: 2 nodes, 8 GPUs each, one MPI rank (= one hpclaunch) per node.
#PBS -N allreduce
#PBS -l select=2:ncpus=64:ngpus=8:mpiprocs=1
#PBS -l walltime=00:10:00
#PBS -j oe
set -eu
cd "$PBS_O_WORKDIR"
# $PBS_NODEFILE lists each node once per mpiprocs: with mpiprocs=1, once.
mpirun --hostfile "$PBS_NODEFILE" -npernode 1 -x PATH -x LD_LIBRARY_PATH \
    hpclaunch examples/allreduce.py
# MPICH / Intel MPI:
#   mpiexec -f "$PBS_NODEFILE" -n 2 -ppn 1 hpclaunch examples/allreduce.py
