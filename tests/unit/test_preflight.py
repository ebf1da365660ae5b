"""How many descriptors a plan holds open, and when this node must check the master port."""

from __future__ import annotations

from hpclaunch.adapters import WorldOptions, select
from hpclaunch.model.plan import Command, LaunchPlan, build_plan
from hpclaunch.options import OutputOptions
from hpclaunch.spawner import preflight


def local_plan(workers: int, log_dir: str | None = None) -> LaunchPlan:
    env = {"PATH": "/usr/bin:/bin"}
    options = WorldOptions(nproc_per_node=workers)
    world = select(env, options, "local").world(env, options)
    command = Command(script="/bin/true", mode="exec", pass_local_rank=False)
    output = OutputOptions(log_dir=log_dir, log_timestamp="20260101000000")
    return build_plan("local", world, command, output)


def test_relayed_workers_hold_two_each_and_the_count_is_a_parameter() -> None:
    plan = local_plan(6)
    assert preflight.held_fds(plan, relayed=True, ranks_filter=None) == 12
    assert preflight.held_fds(plan, True, None, per_relayed_worker=3) == 18  # a pty, say


def test_filtered_workers_hold_one_raw_none_and_logs_two() -> None:
    plan = local_plan(6)
    # ranks 0 and 5 relayed (2 each); 1-4 hidden, but their pipe feeds the failure tail
    assert preflight.held_fds(plan, True, frozenset({0, 5})) == 2 * 2 + 4 * 1
    assert preflight.held_fds(plan, False, None) == 0
    # a log: the file and the pipe the relay copies into it
    assert preflight.held_fds(local_plan(6, "/tmp/logs"), True, None) == 12


def test_node_zero_checks_a_local_master_port_whatever_the_adapter() -> None:
    """No branch on the adapter: a local world's master is this host, so its port is
    checked (the local adapter picked a free one, which is still free); node 1 never."""
    plan = local_plan(2)
    assert plan.adapter == "local" and preflight.hosts_master(plan)
    remote = plan._replace(world=plan.world._replace(master_addr="node-zero.invalid"))
    assert not preflight.hosts_master(remote)


def test_a_port_only_bound_for_a_moment_is_not_in_use() -> None:
    """Another launcher's free-port probe (bound, never listening) is no reason to refuse:
    only a listener is (500 back-to-back local launches once tripped over each other)."""
    import socket

    from hpclaunch.machine import network

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        assert network.listening(port) is False
        assert network.bind_error("127.0.0.1", port) is None
        probe.listen()
        assert network.listening(port) is True
        assert network.bind_error("127.0.0.1", port) is not None
