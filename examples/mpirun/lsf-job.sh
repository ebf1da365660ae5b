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
mpirun --hostfile "$LSB_DJOB_HOSTFILE" -npernode 1 -x PATH -x LD_LIBRARY_PATH \
    hpclaunch examples/allreduce.py
