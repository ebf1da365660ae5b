"""Elastic mode's pure half: node bounds, rendezvous settings, the worker command.

Everything here is decided before anything is spawned and does no I/O, so ``--dry-run`` in
elastic mode and the unit tests need neither torch nor a process.
:mod:`hpclaunch.spawner.elastic.launcher` runs what this describes.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

from hpclaunch.errors import UsageError
from hpclaunch.model.plan import Command, LaunchPlan, worker_argv
from hpclaunch.model.world import World, is_decimal
from hpclaunch.options import ElasticOptions

#: Variables torch's agent sets for each worker after each rendezvous; the plan's static
#: values for them would be wrong as soon as the world changes.
AGENT_VARS = frozenset({
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
    "ROLE_NAME", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
})
#: Contract variables elastic/worker.py derives from the agent's (see DERIVED there).
DERIVED_VARS = frozenset({"CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE"})

#: c10d rendezvous settings ``--rdzv_conf`` may set (torch ignores unknown keys silently,
#: so a typo would be lost; we refuse it instead). All are seconds or counts, but is_host.
RENDEZVOUS_KEYS = (
    "join_timeout", "last_call_timeout", "close_timeout", "heartbeat_timeout",
    "keep_alive_interval", "keep_alive_max_attempt", "read_timeout", "is_host",
)

class ElasticSetup(NamedTuple):
    """Everything the agent needs, validated before anything is spawned."""

    min_nodes: int
    max_nodes: int
    max_restarts: int
    endpoint: str
    rendezvous_conf: Dict[str, str]
    argv: Tuple[str, ...]  # the worker command, ``${local_rank}`` where the rank goes
    nproc_per_node: int
    #: torchrun's ``--role`` (the workers' ``ROLE_NAME``).
    role: str = "default"
    #: torchrun's ``--local-addr``: this node's address in the rendezvous (None: its FQDN).
    local_addr: Optional[str] = None

    def describe(self, run_id: str) -> Dict[str, Any]:
        """The ``elastic`` key of ``--dry-run``: what the agent will be given (``role`` and
        ``local_addr`` only when torchrun's flags set them)."""
        shown: Dict[str, Any] = {
            "min_nodes": self.min_nodes,
            "max_nodes": self.max_nodes,
            "max_restarts": self.max_restarts,
            "rendezvous": {
                "backend": "c10d",
                "endpoint": self.endpoint,
                "run_id": run_id,
                "conf": self.rendezvous_conf,
            },
            "nproc_per_node": self.nproc_per_node,
            "worker_argv": list(self.argv),
            "agent_sets": sorted(AGENT_VARS),
        }
        if self.role != "default":
            shown["role"] = self.role
        if self.local_addr is not None:
            shown["local_addr"] = self.local_addr
        return shown


def node_bounds(world: World, min_nodes: int, max_nodes: int) -> Tuple[int, int]:
    """Resolve ``-1`` to the world's node count and check ``1 <= min <= max``."""
    lo = world.num_nodes if min_nodes == -1 else min_nodes
    hi = world.num_nodes if max_nodes == -1 else max_nodes
    if lo < 1:
        raise UsageError(
            f"--min_elastic_nodes {min_nodes} must be at least 1 "
            f"(or -1 for the world's {world.num_nodes} node(s))"
        )
    if hi < lo:
        raise UsageError(
            f"--max_elastic_nodes ({hi}{' = the world size' if max_nodes == -1 else ''}) is "
            f"below --min_elastic_nodes ({lo}): pass --max_elastic_nodes >= {lo}"
        )
    return lo, hi


def parse_rendezvous_conf(text: Optional[str]) -> Dict[str, str]:
    """``"last_call_timeout=5,join_timeout=60"`` -> dict; unknown keys and bad values refused."""
    conf: Dict[str, str] = {}
    if not text or text == "None":
        return conf
    for part in text.split(","):
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq or key not in RENDEZVOUS_KEYS:
            raise UsageError(
                f"--rdzv_conf has a bad part {part!r}: use key=value pairs with keys from "
                f"{', '.join(RENDEZVOUS_KEYS)}"
            )
        if key == "is_host":
            if value.lower() not in ("true", "false", "1", "0"):
                raise UsageError(f"--rdzv_conf is_host={value!r}: use true or false")
        elif not is_decimal(value) or int(value) == 0:
            raise UsageError(f"--rdzv_conf {key}={value!r}: use a whole number of seconds > 0")
        conf[key] = value
    return conf


def worker_argv_template(command: Command) -> Tuple[str, ...]:
    """The worker command for torch's agent: ``--local_rank=${local_rank}`` via its macro.

    The agent runs ``string.Template.safe_substitute`` over *every* argument, which would
    turn a user's ``$$`` into ``$``; so every ``$`` is doubled first, and only our own
    ``${local_rank}`` is left for torch to fill in.
    """
    first, second = worker_argv(command, 0), worker_argv(command, 1)
    out = []
    for a, b in zip(first, second):
        if a != b:  # the one place the local rank goes (only if --local_rank is passed)
            out.append("--local_rank=${local_rank}")
        else:
            out.append(a.replace("$", "$$"))
    return tuple(out)


def elastic_setup(plan: LaunchPlan, options: ElasticOptions) -> ElasticSetup:
    """Validate the options against the plan: raises UsageError, spawns nothing."""
    world = plan.world
    lo, hi = node_bounds(world, options.min_nodes, options.max_nodes)
    if options.restarts < 0:
        raise UsageError(f"--max_restarts {options.restarts} must be >= 0")
    conf = parse_rendezvous_conf(options.rendezvous_conf)
    if plan.command is None:
        raise UsageError("elastic mode needs the workers' command: plan it with hpclaunch.plan")
    # The node with rank 0 hosts the rendezvous store, as it hosts rank 0 in static mode;
    # torch's own guess (does master_addr name this machine?) fails behind NAT or aliases.
    conf.setdefault("is_host", "true" if world.node_rank == 0 else "false")
    addr = world.master_addr
    host = f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
    return ElasticSetup(
        min_nodes=lo,
        max_nodes=hi,
        max_restarts=options.restarts,
        endpoint=f"{host}:{world.master_port}",
        rendezvous_conf=conf,
        argv=worker_argv_template(plan.command),
        nproc_per_node=len(plan.workers),
    )


def describe(plan: LaunchPlan, options: ElasticOptions) -> Dict[str, Any]:
    """The ``elastic`` key of ``--dry-run`` for ``options`` applied to ``plan``."""
    return elastic_setup(plan, options).describe(plan.world.run_id)
