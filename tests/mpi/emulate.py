"""Several MPI hosts on one machine: a network namespace, an address and a hostname per host.

Each emulated host ``mpinodeN`` is a network namespace ``hpcl-mpinodeN`` with a veth into one
bridge (``hpclbr0``, 10.123.45.1/24 on this machine's side) and the address 10.123.45.(10+N).
``ip netns exec`` bind-mounts ``/etc/netns/<ns>/hosts`` over /etc/hosts, which gives every
host its own name table; the remote-shell agent (``fake_ssh.sh``) adds a UTS namespace with
the host's name. So each launcher sees its own hostname *and* its own loopback: a
master_addr of 127.0.0.1 would fail here as on a real cluster, instead of passing by luck.

Setting up is idempotent and serialised by a lock file, so concurrent test sessions and
re-runs are safe. Nothing here is ever torn down: the namespaces are cheap and reused.
This needs root and iproute2 (``ip``) and util-linux (``unshare``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from typing import List

BRIDGE = "hpclbr0"
SUBNET = "10.123.45"
GATEWAY = f"{SUBNET}.1"
HOSTS_MARK = "# hpclaunch mpi test host"
LOCK_PATH = "/run/hpclaunch-mpi-emulate.lock"
AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_ssh.sh")


def host_name(index: int) -> str:
    return f"mpinode{index}"


def namespace(host: str) -> str:
    return f"hpcl-{host}"


def address(index: int) -> str:
    return f"{SUBNET}.{10 + index}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _link_exists(name: str, netns: str = "") -> bool:
    prefix = ["-n", netns] if netns else []
    return _ip(*prefix, "link", "show", name, check=False).returncode == 0


def _ensure_bridge() -> None:
    if not _link_exists(BRIDGE):
        _ip("link", "add", BRIDGE, "type", "bridge")
    if f"{GATEWAY}/24" not in _ip("-o", "addr", "show", "dev", BRIDGE).stdout:
        _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def _ensure_host(index: int) -> None:
    host = host_name(index)
    ns = namespace(host)
    if ns not in _ip("netns", "list").stdout.split():
        _ip("netns", "add", ns)
    veth = f"hpclv{index}"
    if not _link_exists("eth0", ns):
        if _link_exists(veth):  # left over from a namespace deleted by hand
            _ip("link", "del", veth, check=False)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("link", "set", veth, "master", BRIDGE)
    _ip("link", "set", veth, "up")
    if f"{address(index)}/24" not in _ip("-n", ns, "-o", "addr", "show", "dev", "eth0").stdout:
        _ip("-n", ns, "addr", "add", f"{address(index)}/24", "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", ns, "link", "set", "lo", "up")


def _hosts_lines(count: int) -> List[str]:
    return [f"{address(i)} {host_name(i)} {HOSTS_MARK}" for i in range(1, count + 1)]


def _write_netns_hosts(index: int, count: int) -> None:
    """The host's private /etc/hosts: itself, its peers, and this machine as the gateway."""
    directory = os.path.join("/etc/netns", namespace(host_name(index)))
    os.makedirs(directory, exist_ok=True)
    lines = ["127.0.0.1 localhost", f"{GATEWAY} {socket.gethostname()}", *_hosts_lines(count)]
    path = os.path.join(directory, "hosts")
    with open(path + ".tmp", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def _ensure_root_hosts(count: int) -> None:
    """Make the names resolve on this machine too (mpirun/mpiexec look them up)."""
    with open("/etc/hosts") as handle:
        present = handle.read().splitlines()
    missing = [line for line in _hosts_lines(count) if line not in present]
    if missing:
        # /etc/hosts may be a bind mount (containers): append in place, never replace.
        with open("/etc/hosts", "a") as handle:
            handle.write("".join(line + "\n" for line in missing))


def ensure_hosts(count: int) -> List[str]:
    """Create (or reuse) ``count`` emulated hosts; returns their names in order."""
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ensure_bridge()
        for index in range(1, count + 1):
            _ensure_host(index)
        existing = sorted(
            int(name[len("hpcl-mpinode"):])
            for name in _ip("netns", "list").stdout.split()
            if name.startswith("hpcl-mpinode") and name[len("hpcl-mpinode"):].isdigit()
        )
        known = max([count, *existing])
        for index in range(1, known + 1):
            if index <= count or index in existing:
                _write_netns_hosts(index, known)
        _ensure_root_hosts(known)
    return [host_name(i) for i in range(1, count + 1)]


def why_unavailable() -> str:
    """Empty if hosts can be emulated here, else what is missing."""
    if os.geteuid() != 0:
        return "emulating MPI hosts needs root (network namespaces)"
    for tool in ("ip", "unshare"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            return f"emulating MPI hosts needs '{tool}' (apt-get install iproute2 util-linux)"
    return ""


if __name__ == "__main__":
    print("\n".join(ensure_hosts(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
