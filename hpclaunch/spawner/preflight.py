"""Checks before anything starts: what would otherwise fail half-way, seconds in, as a traceback.

* File descriptors: the launcher holds some per worker for the whole run (today 2 per
  console-piped worker, 2 per per-rank log: the file and the pipe the relay copies from).
  A plan that needs more than the soft ``RLIMIT_NOFILE`` first raises it to the hard limit
  (what the limit is for); if even the hard limit is too low, the launch is refused before
  the first worker or log exists.
* The master port: on the node that hosts the rendezvous, a port another process listens
  on costs every worker a torch EADDRINUSE traceback after its start-up time. A bind with
  ``SO_REUSEADDR`` (as torch's store does) fails only for a listener, not for TIME_WAIT.

Each check raises :class:`~hpclaunch.errors.SpawnError` (exit 2, one line, nothing started).
"""

from __future__ import annotations

import os
from typing import AbstractSet, Optional

from hpclaunch.errors import SpawnError
from hpclaunch.machine import network
from hpclaunch.model.plan import LaunchPlan
from hpclaunch.spawner.output.wiring import FDS_PER_WORKER

#: Descriptors the launcher holds besides its workers' (stdio, signal and watchdog pipes,
#: the selector, the exec-status pipe, a log being opened...), with room to spare.
BASE_FDS = 32




def held_fds(
    plan: LaunchPlan,
    relayed: bool,
    ranks_filter: Optional[AbstractSet[int]],
    per_relayed_worker: int = FDS_PER_WORKER,
) -> int:
    """Descriptors the workers' output holds open for the whole run.

    Two per per-rank log (the file, and the pipe the relay copies into it);
    ``per_relayed_worker`` per worker whose console output the launcher relays; one for a
    worker ``--ranks_filter`` hides (its output still feeds the tail a failure summary
    quotes); none for output passed through raw.
    """
    total = 0
    for spec in plan.workers:
        if spec.log_path:
            total += 2
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
        "limit)"
    )


def open_fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 3


def hosts_master(plan: LaunchPlan) -> bool:
    """Is this node the rendezvous host whose port must be free? Node 0, when the master
    address is one of this host's (whatever adapter built the world: one that picked a free
    port finds it free)."""
    return plan.world.node_rank == 0 and network.may_be_this_host(
        plan.world.master_addr, plan.host
    )


def check_master_port(plan: LaunchPlan) -> None:
    """Refuse a master port someone already listens on, when this node is the master."""
    if not hosts_master(plan):
        return
    addr, port = plan.world.master_addr, plan.world.master_port
    why = network.bind_error(addr, port)
    if why is None:
        return
    raise SpawnError(
        f"master port {port} on {addr} is already in use ({why}): stop what listens there "
        "or pick another with --master_port"
    )


def check(plan: LaunchPlan) -> None:
    """Every check that needs no process started, in the order a user would fix them."""
    check_master_port(plan)
    relayed = not plan.output.raw_output and plan.elastic is None  # elastic workers write directly
    # Per worker, a stack-dump pipe and a heartbeat file (hpclaunch.spawner.stall).
    dumps = len(plan.workers) * (plan.launch.stack_dumps + bool(plan.launch.stall_timeout))
    ensure_fd_budget(len(plan.workers), held_fds(plan, relayed, plan.output.ranks_filter) + dumps)
