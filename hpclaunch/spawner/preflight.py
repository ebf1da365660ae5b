"""Checks before anything starts: what would otherwise fail half-way, seconds in, as a traceback.

* File descriptors: the launcher holds some per worker for the whole run (today 2 per
  console-piped worker, 1 per per-rank log). A plan that needs more than the soft
  ``RLIMIT_NOFILE`` first raises it to the hard limit (what the limit is for); if even the
  hard limit is too low, the launch is refused before the first worker or log exists.
* The master port: on the node that hosts the rendezvous, a port another process listens
  on costs every worker a torch EADDRINUSE traceback after its start-up time. A bind with
  ``SO_REUSEADDR`` (as torch's store does) fails only for a listener, not for TIME_WAIT.

Each check raises :class:`~hpclaunch.errors.SpawnError` (exit 2, one line, nothing started).
"""

from __future__ import annotations

import errno
import os
from typing import AbstractSet, Optional

from hpclaunch.errors import SpawnError
from hpclaunch.spawner.plan import LaunchPlan

#: Descriptors the launcher holds besides its workers' (stdio, signal and watchdog pipes,
#: the selector, the exec-status pipe, a log being opened...), with room to spare.
BASE_FDS = 32


#: Descriptors the launcher holds for the whole run per worker whose output it relays
#: (stdout and stderr pipes); a pty per worker would make this a different number.
FDS_PER_RELAYED_WORKER = 2  # console.FDS_PER_WORKER: separate stdout and stderr pipes


def held_fds(
    plan: LaunchPlan,
    relayed: bool,
    ranks_filter: Optional[AbstractSet[int]],
    per_relayed_worker: int = FDS_PER_RELAYED_WORKER,
) -> int:
    """Descriptors the workers' output holds open for the whole run.

    One per per-rank log; ``per_relayed_worker`` per worker whose console output the
    launcher relays; one for a worker ``--ranks_filter`` hides (its output still feeds the
    tail a failure summary quotes); none for output passed through raw.
    """
    total = 0
    for spec in plan.workers:
        if spec.log_path:
            total += 1
        elif ranks_filter is not None and spec.rank not in ranks_filter:
            total += 1
        elif relayed:
            total += per_relayed_worker
    return total


def ensure_fd_budget(workers: int, held: int) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` if the plan needs it; refuse if the hard one is short."""
    import resource

    needed = open_fd_count() + held + BASE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft or soft == resource.RLIM_INFINITY:
        return
    if hard == resource.RLIM_INFINITY or needed <= hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return
        except (ValueError, OSError):
            pass  # some hard limits cannot be set as the soft one (above nr_open)
    raise SpawnError(
        f"{workers} worker(s) need about {needed} open files but RLIMIT_NOFILE is "
        f"{soft} (hard limit {hard}): raise it ('ulimit -n {needed}' or the scheduler's "
        "limit), or use --enable_each_rank_log DIR (1 per worker instead of 2)"
    )


def open_fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 3


def hosts_master(plan: LaunchPlan, explicit_port: bool) -> bool:
    """Is this node the rendezvous host whose port must be free?

    Node 0 of any world whose master address is one of this host's; in local mode only when
    the port was asked for (a single-node job of plain executables never uses it).
    """
    world = plan.world
    if world.node_rank != 0:
        return False
    if plan.adapter == "local" and not explicit_port:
        return False
    return True


def check_master_port(plan: LaunchPlan, explicit_port: bool) -> None:
    """Refuse a master port someone already listens on, when this node is the master."""
    if not hosts_master(plan, explicit_port):
        return
    addr, port = plan.world.master_addr, plan.world.master_port
    if not _may_be_this_host(addr, plan.host):
        return
    why = _bind_error(addr, port)
    if why is None:
        return
    raise SpawnError(
        f"master port {port} on {addr} is already in use ({why}): stop what listens there "
        "or pick another with --master_port"
    )


def _may_be_this_host(addr: str, host: str) -> bool:
    """An address literal, or a name of this host: worth a (fast, local) resolution.

    Any other name is left alone: resolving it may wait on DNS, and the check is only a
    courtesy (the workers would report a busy port themselves).
    """
    import socket

    if addr in ("localhost", host, os.uname().nodename):
        return True
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, addr)
            return True
        except OSError:
            continue
    return False


def _bind_error(addr: str, port: int) -> Optional[str]:
    """Why a listener could not take ``port`` here, or None (free, or not our address)."""
    import socket

    try:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except OSError:
        return None  # an unresolvable master fails in the workers with torch's own words
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return exc.strerror or "EADDRINUSE"
                continue  # EADDRNOTAVAIL: the master is another host
            # Ours: torch's store listens on every address, so that port must be free too.
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((wildcard, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return exc.strerror or "EADDRINUSE"
        return None
    return None


def check(
    plan: LaunchPlan,
    relayed: bool,
    ranks_filter: Optional[AbstractSet[int]],
    explicit_port: bool,
) -> None:
    """Every check that needs no process started, in the order a user would fix them."""
    check_master_port(plan, explicit_port)
    ensure_fd_budget(len(plan.workers), held_fds(plan, relayed, ranks_filter))
