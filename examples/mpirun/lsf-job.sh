#!/bin/sh
# IBM Spectrum LSF: 2 nodes, one task slot each (span[ptile=1]) = one hpclaunch per node,
# which starts a worker per GPU of its node.
#BSUB -J allreduce
#BSUB -n 2
#BSUB -R "span[ptile=1]"
#BSUB -gpu "num=8"
#BSUB -W 00:10
#BSUB -o allreduce.%J.out
set -eu
# --adapter mpi: the world over MPI and MPI_Abort on failure (without it, inside an LSF job
# the built-in lsf adapter reads $LSB_MCPU_HOSTS).
mpirun --hostfile "$LSB_DJOB_HOSTFILE" -npernode 1 -x PATH -x LD_LIBRARY_PATH \
    hpclaunch --adapter mpi examples/allreduce.py
