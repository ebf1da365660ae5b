#!/bin/sh
# Install hpclaunch (+ torch==2.13.0) into <repo>/.venv and run the main job on this machine:
# 4 workers doing a real torch.distributed all_reduce (gloo on CPU, NCCL on GPUs). Extra
# arguments go to hpclaunch before the script, e.g. --nproc_per_node 8. A second run skips
# pip entirely when pyproject.toml and the torch pin are unchanged (scripts/install.sh's stamp).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=$(sh "$ROOT/scripts/install.sh" | tail -n 1)
exec "$PYTHON" -m hpclaunch --nproc_per_node 4 "$@" "$ROOT/examples/allreduce.py"
