"""Several MPI hosts on one machine, each with its own network, address and hostname.

Every emulated host ``mpinodeN`` is a network namespace held open by one small holder
process (``unshare --net``), with a veth into a bridge private to this session and the
address ``10.124.<k>.(10+N)``; the machine's side of the bridge is ``10.124.<k>.1``. The
namespaces are never named (no ``ip netns add``), so nothing appears under /run/netns or
/etc/netns; they vanish with their holder, taking their veths along.

Names resolve without touching the machine's /etc/hosts: the remote-shell agent
(``fake_ssh.sh``) enters the host's network namespace in a private mount namespace where a
per-host hosts file is bind-mounted over /etc/hosts (its own name, its peers, the machine)
and a tmpfs over /dev/shm (MPI's shared-memory segments vanish with the host's processes,
even killed ones), and sets the hostname in a private UTS namespace. mpirun/mpiexec
themselves run under :func:`Network.wrap`, a private mount namespace with the machine's
/etc/hosts plus the emulated hosts. A launcher thus sees its own hostname *and* its own
loopback: a master_addr of 127.0.0.1 fails here as on a real cluster instead of by luck.

Each session claims its own bridge ``hpclb<k>`` (creating a link is atomic: the first free
``k`` wins), so concurrent sessions never share addresses. :meth:`Network.close` kills the
holders and deletes the bridge; the holders also exit when their parent's pipe closes, so
a crashed session leaves at most an empty bridge. Needs root, iproute2 and util-linux.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

BRIDGE_PREFIX = "hpclb"
AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_ssh.sh")
#: The agent finds each host's holder PID and hosts file in this directory.
DIR_VAR = "HPCL_EMULATED_HOSTS_DIR"
MAX_NETWORKS = 64


def host_name(index: int) -> str:
    return f"mpinode{index}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _in_netns(pid: int, *argv: str) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], check=True, capture_output=True)


def _claim_bridge() -> int:
    """The first ``k`` whose bridge this call could create: the link itself is the lock."""
    for index in range(MAX_NETWORKS):
        made = _ip("link", "add", f"{BRIDGE_PREFIX}{index}", "type", "bridge", check=False)
        if made.returncode == 0:
            return index
    raise RuntimeError(f"no free bridge name {BRIDGE_PREFIX}0..{MAX_NETWORKS - 1}")


class Network:
    """``count`` emulated hosts; use as a context manager or call :meth:`close`."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.index = _claim_bridge()
        self.bridge = f"{BRIDGE_PREFIX}{self.index}"
        self.subnet = f"10.124.{self.index}"
        self.directory = tempfile.mkdtemp(prefix="hpcl-hosts-")
        self._holders: List[subprocess.Popen[bytes]] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def hosts(self) -> List[str]:
        return [host_name(i) for i in range(1, self.count + 1)]

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def address(self, index: int) -> str:
        return f"{self.subnet}.{10 + index}"

    @property
    def machine_hosts_file(self) -> str:
        return os.path.join(self.directory, "machine.hosts")

    def env(self) -> Dict[str, str]:
        """What the agent needs from the environment of mpirun/mpiexec."""
        return {DIR_VAR: self.directory}

    def wrap(self, argv: Sequence[str]) -> List[str]:
        """``argv`` in a private mount namespace where /etc/hosts names the emulated hosts
        and /dev/shm is its own (shared-memory segments go with the namespace).

        unshare and sh both exec, so the PID a caller gets is the PID of ``argv[0]``.
        """
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c",
            'mount -n --bind "$0" /etc/hosts && mount -n -t tmpfs tmpfs /dev/shm && exec "$@"',
            self.machine_hosts_file, *argv,
        ]

    # -- set-up -------------------------------------------------------------------------------

    def _build(self) -> None:
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        peers = [f"{self.address(i)} {host_name(i)}" for i in range(1, self.count + 1)]
        with open("/etc/hosts") as handle:
            machine = handle.read()
        self._write(self.machine_hosts_file, machine.rstrip("\n") + "\n" + "\n".join(peers))
        for index in range(1, self.count + 1):
            self._add_host(index, peers)

    def _write(self, path: str, text: str) -> None:
        with open(path, "w") as handle:
            handle.write(text + "\n")

    def _add_host(self, index: int, peers: List[str]) -> None:
        host = host_name(index)
        # The holder keeps the namespace alive and exits when its stdin (our pipe) closes;
        # its "ready" line says it is inside the new namespace (before that, a veth sent to
        # its PID would land in this machine's namespace).
        holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "echo ready && exec cat >/dev/null"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._holders.append(holder)
        assert holder.stdout is not None
        if holder.stdout.readline() != b"ready\n":
            raise RuntimeError(f"could not make a network namespace for {host}")
        holder.stdout.close()
        veth = f"{self.bridge}v{index}"
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(holder.pid))
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _in_netns(holder.pid, "ip", "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
        _in_netns(holder.pid, "ip", "link", "set", "eth0", "up")
        _in_netns(holder.pid, "ip", "link", "set", "lo", "up")
        own = ["127.0.0.1 localhost", f"{self.gateway} {socket.gethostname()}", *peers]
        self._write(os.path.join(self.directory, f"{host}.hosts"), "\n".join(own))
        self._write(os.path.join(self.directory, f"{host}.pid"), str(holder.pid))

    # -- tear-down ----------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the holders (their namespaces and veths go with them), delete the bridge."""
        for holder in self._holders:
            if holder.stdin is not None:
                holder.stdin.close()
            try:
                holder.wait(10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
        self._holders.clear()
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def why_unavailable() -> str:
    """Empty if hosts can be emulated here, else what is missing."""
    if os.geteuid() != 0:
        return "emulating MPI hosts needs root (network namespaces)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"emulating MPI hosts needs '{tool}' (apt-get install iproute2 util-linux)"
    return ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``emulate.py N COMMAND...``: run COMMAND with N emulated hosts, then remove them."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or not args[0].isdigit():
        print("usage: emulate.py N COMMAND... (e.g. emulate.py 2 mpirun --hostfile h ...)",
              file=sys.stderr)
        return 2
    with Network(int(args[0])) as network:
        env = dict(os.environ, **network.env())
        return subprocess.run(network.wrap(args[1:]), env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
