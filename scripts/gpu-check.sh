#!/usr/bin/env bash
# Real-GPU check of hpclaunch on this machine's NVIDIA GPUs (needs torch with CUDA):
#   1. local adapter, --numa_binding exclusive: NCCL all_reduce over every local GPU;
#   2. explicit adapter, one-node world_info with the slots reversed, --numa_binding node;
# and for every rank: LOCAL_RANK + CUDA_VISIBLE_DEVICES -> the device torch used (its UUID,
# compared with nvidia-smi's list in PCI order), the all_reduce sum, and the CPUs/memory
# policy the worker runs under, compared with sysfs (the GPU's numa_node and that node's
# cpulist). Prints the binding report for the real topology (--log_level debug).
#
# Usage: scripts/gpu-check.sh            (PYTHON=/path/to/python to choose the interpreter)
# Output is also written to $GPU_CHECK_LOG (default benchmarks/results/gpu-check-<host>.txt).
# Exit 0 only if every check passed; on a machine without NVIDIA GPUs it fails (exit 1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
HOST=$(hostname -s 2>/dev/null || hostname)
LOG=${GPU_CHECK_LOG:-$ROOT/benchmarks/results/gpu-check-$HOST.txt}
mkdir -p "$(dirname "$LOG")"

fail() { echo "gpu-check: FAILED: $*"; exit 1; }

main() {

# Loud failure without NVIDIA GPUs: this script must never "pass" on a CPU machine.
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this is not an NVIDIA GPU machine"
ls /proc/driver/nvidia/gpus/* >/dev/null 2>&1 || fail "no /proc/driver/nvidia/gpus entries"
NGPU=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())') \
    || fail "$PYTHON cannot import torch"
[ "$NGPU" -ge 1 ] || fail "torch sees no CUDA device (torch.cuda.device_count() = 0)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_ORDER=PCI_BUS_ID   # CUDA index = PCI order, as nvidia-smi lists below
unset CUDA_VISIBLE_DEVICES

echo "== $(date -u +%FT%TZ) $HOST: $NGPU GPU(s), $("$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"
nvidia-smi --query-gpu=index,pci.bus_id,uuid,name --format=csv,noheader | tee "$WORK/smi.csv"
echo "== allowed CPUs of this shell: $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
for n in /sys/devices/system/node/node[0-9]*; do echo "   $(basename "$n"): cpus $(cat "$n/cpulist")"; done
nvidia-smi topo -m 2>/dev/null || true

run() {  # name, then hpclaunch flags
    local name=$1; shift
    mkdir -p "$WORK/$name"
    echo "== $name: hpclaunch $*"
    "$PYTHON" -m hpclaunch --master_port "$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')" \
        --log_level debug "$@" "$ROOT/scripts/gpu_check_worker.py" --out "$WORK/$name" \
        2> >(tee "$WORK/$name.err" >&2) || fail "$name: hpclaunch exited $?"
}

run local --adapter local --numa_binding exclusive
SLOTS=$("$PYTHON" -c "print(list(range($NGPU))[::-1])")
INFO=$("$PYTHON" -c "import base64, json; print(base64.b64encode(json.dumps({'$HOST': $SLOTS}).encode()).decode())")
run explicit --world_info "$INFO" --node_rank 0 --master_addr 127.0.0.1 --numa_binding node

"$PYTHON" - "$WORK" "$NGPU" <<'EOF' || fail "checks above"
import json, os, sys
work, n = sys.argv[1], int(sys.argv[2])
rows = [[c.strip() for c in line.split(",")] for line in open(f"{work}/smi.csv") if line.strip()]
def pci_key(bus):  # "00000000:18:00.0" -> numeric PCI order
    d, b, rest = bus.split(":"); dev, fn = rest.split(".")
    return (int(d, 16), int(b, 16), int(dev, 16), int(fn, 16))
rows.sort(key=lambda r: pci_key(r[1]))          # CUDA index under PCI_BUS_ID order
def cpulist(text):
    out = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-"); out.update(range(int(lo), int(hi or lo) + 1))
    return out
def sysfs_node(bus):
    d, rest = bus.split(":", 1)
    try:
        return int(open(f"/sys/bus/pci/devices/{int(d, 16):04x}:{rest.lower()}/numa_node").read())
    except OSError:
        return -1
allowed = os.sched_getaffinity(0)
bad = []
for name, mode in (("local", "exclusive"), ("explicit", "node")):
    recs = [json.load(open(f"{work}/{name}/rank{r}.json")) for r in range(n)]
    seen = set()
    for r in recs:
        entries = r["cvd"].split(",")
        index = int(entries[r["local_rank"]])
        smi_index, bus, uuid, model = rows[index]
        tag = f"{name} rank {r['rank']} (LOCAL_RANK {r['env_local_rank']}, CUDA_VISIBLE_DEVICES={r['cvd']})"
        print(f"{tag}: cuda:{r['local_rank']} = {r['name']} uuid {r['uuid'][:13]}..; expected GPU {index} {bus} {uuid[:17]}..; "
              f"sum {r['sum']:g}/{r['expected']:g}; cpus {len(r['cpus'])}; mempolicy {r['mempolicy']}")
        if str(r["env_local_rank"]) != str(r["local_rank"]):
            bad.append(f"{tag}: --local_rank {r['local_rank']} != LOCAL_RANK")
        if uuid.removeprefix("GPU-") != r["uuid"].removeprefix("GPU-"):
            bad.append(f"{tag}: torch's device is {r['uuid']}, nvidia-smi says entry {index} is {uuid}")
        if r["sum"] != r["expected"]:
            bad.append(f"{tag}: all_reduce sum {r['sum']} != {r['expected']}")
        seen.add(r["uuid"])
        node = sysfs_node(bus)
        if node < 0:
            if r["mempolicy"].get("mode") != 0 or set(r["cpus"]) != allowed:
                bad.append(f"{tag}: GPU node unknown, yet bound: {r['cpus']} {r['mempolicy']}")
            continue
        near = cpulist(open(f"/sys/devices/system/node/node{node}/cpulist").read()) & allowed
        if not set(r["cpus"]) <= near or (mode == "node" and set(r["cpus"]) != near):
            bad.append(f"{tag}: cpus {r['cpus']} not the allowed CPUs of node {node} ({sorted(near)})")
        if r["mempolicy"] != {"mode": 1, "nodes": [node]}:
            bad.append(f"{tag}: mempolicy {r['mempolicy']} is not MPOL_PREFERRED on node {node}")
    if len(seen) != n:
        bad.append(f"{name}: {n} ranks used {len(seen)} distinct GPUs")
    if mode == "exclusive":
        flat = [c for r in recs for c in r["cpus"]]
        if all(sysfs_node(rows[int(r['cvd'].split(',')[r['local_rank']])][1]) >= 0 for r in recs) \
                and len(flat) != len(set(flat)):
            bad.append(f"{name}: exclusive CPU shares overlap")
for line in bad:
    print("MISMATCH:", line)
sys.exit(1 if bad else 0)
EOF
echo "== binding report (local run, --numa_binding exclusive):"
grep -A "$NGPU" "numa binding" "$WORK/local.err" || fail "no binding report in the debug output"
echo "gpu-check: OK ($NGPU GPUs, local and explicit adapters; output in $LOG)"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
