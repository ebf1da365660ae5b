#!/bin/sh
# PBS Pro / OpenPBS: 2 nodes, 8 GPUs each, one MPI rank (= one hpclaunch) per node.
#PBS -N allreduce
#PBS -l select=2:ncpus=64:ngpus=8:mpiprocs=1
#PBS -l walltime=00:10:00
#PBS -j oe
set -eu
cd "$PBS_O_WORKDIR"
# $PBS_NODEFILE lists each node once per mpiprocs: with mpiprocs=1, once.
# --adapter mpi: the world over MPI and MPI_Abort on failure (without it, inside a PBS job
# the built-in pbs adapter reads $PBS_NODEFILE, as under 'pbsdsh -u -- hpclaunch ...').
mpirun --hostfile "$PBS_NODEFILE" -npernode 1 -x PATH -x LD_LIBRARY_PATH \
    hpclaunch --adapter mpi examples/allreduce.py
# MPICH / Intel MPI:
#   mpiexec -f "$PBS_NODEFILE" -n 2 -ppn 1 hpclaunch --adapter mpi examples/allreduce.py
