"""This host's name, its addresses, and whether a TCP port is free here.

Through the C module ``_socket`` (:data:`hpclaunch.fast.csocket`): every launch asks for
its hostname and may bind a port or two, and ``socket.py`` would cost that start-up its
enum conversions and ``selectors`` import.
"""

from __future__ import annotations

import errno
import os
from typing import Any, List, Optional

from hpclaunch.fast import csocket


def hostname() -> str:
    return str(csocket.gethostname())


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    sock = csocket.socket(csocket.AF_INET, csocket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def free_port(host: str = "") -> int:
    """A port the kernel says is free now (bind to 0). Racy by nature, like torchrun's."""
    sock = csocket.socket(csocket.AF_INET, csocket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def may_be_this_host(addr: str, host: str) -> bool:
    """An address literal, or a name of this host: worth a (fast, local) resolution.

    Any other name is left alone: resolving it may wait on DNS, and the check it serves is
    only a courtesy (the workers would report a busy port themselves).
    """
    if addr in ("localhost", host, os.uname().nodename):
        return True
    for family in (csocket.AF_INET, csocket.AF_INET6):
        try:
            csocket.inet_pton(family, addr)
            return True
        except OSError:
            continue
    return False


def bind_error(addr: str, port: int) -> Optional[str]:
    """Why a listener could not take ``port`` here, or None (free, or not our address).

    Binds with ``SO_REUSEADDR``, as torch's store does, so only a listener makes it fail,
    not a connection in TIME_WAIT; and, when the address is ours, on the wildcard too:
    torch's store listens on every address. A bind can also fail for a moment because
    another launcher on this machine is probing the same port (the local adapter's free-port
    test): the kernel's socket table then decides, and only a socket in LISTEN counts.
    """
    try:
        infos = csocket.getaddrinfo(_host_bytes(addr), port, 0, csocket.SOCK_STREAM)
    except OSError:
        return None  # an unresolvable master fails in the workers with torch's own words
    for family, kind, proto, _, sockaddr in infos:
        why = _bind(family, kind, proto, sockaddr)
        if why == "not ours":
            continue  # EADDRNOTAVAIL: the master is another host
        if why is None:
            wildcard = "::" if family == csocket.AF_INET6 else "0.0.0.0"
            why = _bind(family, kind, proto, (wildcard, port), ours=True)
        return why if why is None or listening(port) is not False else None
    return None


#: The kernel's TCP socket tables; state ``0A`` is LISTEN.
PROC_NET_TCP = ("/proc/net/tcp", "/proc/net/tcp6")


def listening(port: int) -> Optional[bool]:
    """Whether a socket of this network namespace listens on ``port`` (None: cannot tell)."""
    wanted = f":{port:04X}"
    seen = False
    for path in PROC_NET_TCP:
        try:
            with open(path, "rb") as table:
                lines = table.read().decode("ascii", "replace").splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(wanted):
                return True
    return False if seen else None


def _host_bytes(name: str) -> Any:
    """An ASCII name as bytes: ``getaddrinfo`` encodes a str with the idna codec, whose
    import (``stringprep``, ``unicodedata``) costs more than the lookup of an address."""
    return name.encode() if name.isascii() else name


def _bind(
    family: int, kind: int, proto: int, sockaddr: Any, ours: bool = False
) -> Optional[str]:
    """None if a listener could bind ``sockaddr``; why not; or "not ours" (not our address)."""
    sock = csocket.socket(family, kind, proto)
    try:
        sock.setsockopt(csocket.SOL_SOCKET, csocket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return exc.strerror or "EADDRINUSE"
        return None if ours else "not ours"
    finally:
        sock.close()
    return None


def resolved_addresses(name: str) -> List[str]:
    """What ``name`` resolves to here (the site's DNS or /etc/hosts), in resolver order."""
    try:
        infos = csocket.getaddrinfo(_host_bytes(name), None, 0, csocket.SOCK_STREAM)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


def interface_addresses() -> List[str]:
    """Addresses of the interfaces that are up, in the kernel's interface order."""
    import psutil  # a dependency of hpclaunch; imported here, only the MPI adapter asks

    stats = psutil.net_if_stats()
    found: List[str] = []
    for name, addresses in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        found.extend(
            a.address for a in addresses if a.family in (csocket.AF_INET, csocket.AF_INET6)
        )
    return found
