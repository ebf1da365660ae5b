#!/bin/sh
# Two nodes x all their GPUs under OpenMPI 5. One hpclaunch per node (-npernode 1): each
# starts one worker per visible GPU (or --nproc_per_node N). ssh does not carry your
# environment to the other nodes, so export what the launcher needs with -x.
set -eu
cd "$(dirname "$0")/.."

mpirun --hostfile mpirun/hostfile.openmpi -npernode 1 \
    -x PATH -x LD_LIBRARY_PATH -x VIRTUAL_ENV \
    hpclaunch allreduce.py

# CPU-only try-out: 2 gloo workers per node.
#   mpirun --hostfile mpirun/hostfile.openmpi -npernode 1 -x PATH \
#       hpclaunch --nproc_per_node 2 allreduce.py --backend gloo
# See the plan each node would run, without starting anything:
#   mpirun --hostfile mpirun/hostfile.openmpi -npernode 1 -x PATH hpclaunch --dry-run allreduce.py
