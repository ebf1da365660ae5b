"""Which hpclaunch launch a torchrun command line is, decided before anything starts.

torchrun 2.13 runs every command line through its elastic agent; hpclaunch keeps each
form's meaning with its own parts (``torch/distributed/run.py``'s ``run()`` decides the
same forms):

* **one node** -- ``--standalone``, or torchrun's implicit single-node form (static backend,
  no endpoint, no ``--master-port``, ``--nnodes 1``), or a c10d rendezvous on this host for
  at most one node: hpclaunch's own spawner, master ``127.0.0.1`` on a free port, run id a
  fresh UUID (``--standalone``, implicit form) or ``--rdzv-id``;
* **static** -- ``--nnodes N --node-rank R --master-addr A --master-port P`` (or
  ``PET_*``): hpclaunch's own spawner, the world of
  :class:`~hpclaunch.adapters.torchrun.TorchrunAdapter`;
* **rendezvous** -- ``--nnodes MIN:MAX``/``--rdzv-backend c10d`` (and any form with
  ``--max-restarts`` above 0, which needs torch's agent to restart the worker group):
  hpclaunch's elastic mode (:mod:`hpclaunch.spawner.elastic`), torch's agent under
  hpclaunch's launcher.

Every flag whose meaning cannot be kept is either refused (:class:`UsageError`, exit 2,
nothing started) or accepted with a note saying what hpclaunch does instead
(:mod:`hpclaunch.torchrun.flags`); docs/cli.md lists each flag's status.
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

from hpclaunch import api
from hpclaunch.adapters.torchrun import parse_endpoint, parse_nnodes, worker_slots
from hpclaunch.errors import AdapterError, UsageError
from hpclaunch.machine import network
from hpclaunch.model.plan import LaunchPlan
from hpclaunch.model.world import Host, World
from hpclaunch.options import ElasticOptions, LaunchOptions, OutputOptions, WorldOptions
from hpclaunch.reporter import Reporter
from hpclaunch.torchrun.flags import (
    check_flags,
    local_ranks,
    output_options,
    resolve_command,
    shutdown_timeout,
)

#: c10d's default port when ``--rdzv-endpoint`` names none (torch's DEFAULT_PORT).
C10D_DEFAULT_PORT = 29400


class TorchrunLaunch(NamedTuple):
    """A torchrun command line as hpclaunch runs it: the plan, what it means, what to say."""

    plan: LaunchPlan
    #: static / one-node forms: torchrun's extra variables are in the plan's workers.
    form: str
    notes: Tuple[str, ...]


def uuid4() -> str:
    """torchrun's run id for ``--standalone``: a random UUID (without importing uuid)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# --------------------------------------------------------------------------- the forms


class Form(NamedTuple):
    """Which launch: ``local`` (one node), ``static`` or ``rendezvous``; and its rendezvous."""

    kind: str
    min_nodes: int
    max_nodes: int
    run_id: str
    #: rendezvous forms: the c10d endpoint (static form: the master)
    host: str = ""
    port: int = 0


def choose_form(args: argparse.Namespace, hostname: str) -> Tuple[Form, List[str]]:
    """torchrun's ``run()`` decisions, applied to hpclaunch's three launches."""
    notes: List[str] = []
    try:
        low, high = parse_nnodes(args.nnodes)
    except AdapterError as exc:
        raise UsageError(str(exc)) from None
    if args.standalone:
        if high > 1:
            raise UsageError(
                f"--standalone runs one node, but --nnodes is {args.nnodes}: drop --nnodes, or "
                "use --rdzv-backend c10d --rdzv-endpoint HOST:PORT for several nodes"
            )
        return Form("local", 1, 1, uuid4()), notes
    endpoint = args.rdzv_endpoint.strip()
    if args.rdzv_backend == "static":
        if not endpoint and args.master_port is None and high == 1:
            return Form("local", 1, 1, uuid4()), notes  # torchrun's implicit standalone
        if low != high:
            raise UsageError(
                f"--nnodes {args.nnodes} (MIN:MAX) needs a rendezvous: add --rdzv-backend c10d "
                "--rdzv-endpoint HOST:PORT"
            )
        if endpoint:
            host, port = _endpoint(endpoint, -1)
        else:
            host, port = args.master_addr, 29500 if args.master_port is None else args.master_port
        if args.rdzv_conf and not args.max_restarts:
            notes.append(
                f"--rdzv-conf {args.rdzv_conf} is not used by the static form (hpclaunch's "
                "nodes do not rendezvous)"
            )
        return Form("static", high, high, args.rdzv_id, host, port), notes
    if not endpoint:
        raise UsageError("--rdzv-backend c10d needs --rdzv-endpoint HOST[:PORT] (node 0's address)")
    host, port = _endpoint(endpoint, C10D_DEFAULT_PORT)
    if args.node_rank != 0:
        notes.append(
            f"--node-rank {args.node_rank} is not used by the c10d rendezvous, which assigns "
            "node ranks (as in torchrun)"
        )
    if high == 1 and network.may_be_this_host(host, hostname):
        return Form("local", 1, 1, args.rdzv_id, host, port), notes
    if port == 0:
        raise UsageError(
            f"--rdzv-endpoint {endpoint}: port 0 (a free port) works for one node only; give "
            "the port every node can reach"
        )
    return Form("rendezvous", low, high, args.rdzv_id, host, port), notes


def _endpoint(text: str, default_port: int) -> Tuple[str, int]:
    try:
        return parse_endpoint(text, default_port, "--rdzv-endpoint")
    except AdapterError as exc:
        raise UsageError(str(exc)) from None


def static_world(
    args: argparse.Namespace, form: Form, env: Mapping[str, str], reporter: Reporter
) -> World:
    """The World of the static and one-node forms, by the torchrun adapter from ``PET_*``
    (torchrun's flags are its ``PET_*`` by torchrun's own rule)."""
    if form.kind == "local":
        master, port, node_rank = "127.0.0.1", network.free_port("127.0.0.1"), 0
    else:
        master, port, node_rank = form.host, form.port, args.node_rank
    overlay = dict(env)
    overlay.update({
        "PET_NNODES": str(form.max_nodes),
        "PET_NPROC_PER_NODE": args.nproc_per_node,
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": master,
        "PET_MASTER_PORT": str(port),
        "PET_RDZV_ID": form.run_id,
        "PET_RDZV_BACKEND": "static",
        "PET_RDZV_ENDPOINT": "",
        "PET_STANDALONE": "0",
    })
    return api.detect_world(overlay, WorldOptions(adapter="torchrun"), reporter=reporter)


def rendezvous_world(args: argparse.Namespace, form: Form, env: Mapping[str, str],
                     hostname: str) -> World:
    """This node alone, as elastic mode plans it (the rendezvous decides the rest)."""
    try:
        slots, gpu_slots = worker_slots(args.nproc_per_node, env)
    except AdapterError as exc:
        raise UsageError(str(exc)) from None
    port = form.port or network.free_port("127.0.0.1")
    return World(
        hosts=(Host(hostname or "node0", slots),),
        node_rank=0,
        master_addr=form.host,
        master_port=port,
        run_id=form.run_id,
        gpu_slots=gpu_slots,
        source="torchrun",
    )


# --------------------------------------------------------------------------- worker variables


def torchrun_variables(
    plan: LaunchPlan, args: argparse.Namespace, env: Mapping[str, str]
) -> LaunchPlan:
    """Add what torchrun's workers see and hpclaunch's contract does not set (static forms).

    ``ROLE_NAME``, ``TORCHELASTIC_RESTART_COUNT`` (0: no restarts without the agent),
    ``TORCHELASTIC_MAX_RESTARTS``, ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` (inherited, else 1),
    ``OMP_NUM_THREADS=1`` with several workers and none set (torchrun's rule), and
    ``TORCHELASTIC_USE_AGENT_STORE=False``: rank 0's worker hosts the store (torchrun's
    agent hosts it and says True; a worker told True would wait for an agent's store).
    ``--virtual-local-rank``: ``LOCAL_RANK=0`` and each worker's own GPU, as torchrun does.
    """
    common = {
        "ROLE_NAME": args.role,
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": str(args.max_restarts),
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    }
    if "OMP_NUM_THREADS" not in env and len(plan.workers) > 1:
        common["OMP_NUM_THREADS"] = "1"
    parent_gpus = env.get("CUDA_VISIBLE_DEVICES")
    workers = []
    for spec in plan.workers:
        worker_env: Dict[str, str] = dict(spec.env)
        for name, value in common.items():
            if name == "OMP_NUM_THREADS":
                worker_env.setdefault(name, value)  # a CPU binding's own count wins
            else:
                worker_env[name] = value
        if args.virtual_local_rank:
            worker_env["LOCAL_RANK"] = "0"
            worker_env["CUDA_VISIBLE_DEVICES"] = _own_gpu(parent_gpus, spec.local_rank)
        workers.append(spec._replace(env=tuple(worker_env.items())))
    return plan._replace(workers=tuple(workers))


def _own_gpu(parent: Optional[str], local_rank: int) -> str:
    if parent is None:
        return str(local_rank)
    entries = parent.split(",")
    if local_rank >= len(entries):
        raise UsageError(
            f"--virtual-local-rank: local rank {local_rank} has no GPU in "
            f"CUDA_VISIBLE_DEVICES={parent}"
        )
    return entries[local_rank].strip()


# --------------------------------------------------------------------------- the whole


def plan_launch(
    args: argparse.Namespace, env: Mapping[str, str], reporter: Reporter
) -> TorchrunLaunch:
    """The plan of a torchrun command line: checked, nothing started."""
    notes = check_flags(args)
    try:  # named as the user wrote it; the worlds below count the same slots again
        worker_slots(args.nproc_per_node, env, "--nproc-per-node")
    except AdapterError as exc:
        raise UsageError(str(exc)) from None
    hostname = network.hostname()
    form, more = choose_form(args, hostname)
    notes += more
    command, more = resolve_command(args, env)
    notes += more
    log_dir, more = output_options(args)
    notes += more
    launch = LaunchOptions(
        kill_timeout=shutdown_timeout(args, env),
        numa_binding=args.numa_binding or "none",
    )
    elastic = form.kind == "rendezvous" or args.max_restarts > 0
    if args.local_addr and not elastic:
        notes.append(f"--local-addr {args.local_addr} is used by a c10d rendezvous only")
    if elastic:
        world = _elastic_world(args, form, env, hostname)
    else:
        world = static_world(args, form, env, reporter)
    ranks_filter = None
    if args.local_ranks_filter:
        chosen = local_ranks(args.local_ranks_filter, world.local_world_size)
        if elastic:
            notes.append(
                "--local-ranks-filter is not applied in elastic mode: every rank's output is "
                "shown"
            )
        else:
            ranks_filter = frozenset(world.first_rank + r for r in chosen)
    output = OutputOptions(log_dir=log_dir, prefix_output=False, ranks_filter=ranks_filter)
    if not elastic:
        plan = api.plan(world, command, output=output, launch=launch, env=env, reporter=reporter)
        return TorchrunLaunch(torchrun_variables(plan, args, env), form.kind, tuple(notes))
    if args.virtual_local_rank:
        raise UsageError(
            "--virtual-local-rank is supported in the static and one-node forms only (not "
            "with a c10d rendezvous or --max-restarts)"
        )
    plan = api.plan(
        world, command, output=output, launch=launch, env=env, reporter=reporter,
        elastic=ElasticOptions(
            min_nodes=form.min_nodes,
            max_nodes=form.max_nodes,
            max_restarts=args.max_restarts,
            rendezvous_conf=args.rdzv_conf or None,
        ),
    )
    plan = _agent_settings(plan, args, form, env)
    notes.append(
        f"the workers run under torch's elastic agent (c10d rendezvous at "
        f"{plan.elastic.endpoint if plan.elastic else '?'}, {form.min_nodes}..."
        f"{form.max_nodes} node(s), up to {args.max_restarts} restart(s))"
    )
    return TorchrunLaunch(plan, "elastic", tuple(notes))


def _elastic_world(
    args: argparse.Namespace, form: Form, env: Mapping[str, str], hostname: str
) -> World:
    if form.kind == "rendezvous":
        return rendezvous_world(args, form, env, hostname)
    if form.kind == "local":  # one node with restarts: its own c10d store, here
        one = form._replace(host=form.host or "127.0.0.1")
        return rendezvous_world(args, one, env, hostname)
    # static with restarts: every node knows the world, node 0 hosts the store
    try:
        slots, gpu_slots = worker_slots(args.nproc_per_node, env)
    except AdapterError as exc:
        raise UsageError(str(exc)) from None
    from hpclaunch.adapters.torchrun import rank_named_hosts

    if not 0 <= args.node_rank < form.max_nodes:
        raise UsageError(
            f"--node-rank {args.node_rank} is outside the {form.max_nodes} node(s) of --nnodes"
        )
    return World(
        hosts=rank_named_hosts(form.max_nodes, args.node_rank, hostname, slots, form.host),
        node_rank=args.node_rank,
        master_addr=form.host,
        master_port=form.port,
        run_id=form.run_id,
        gpu_slots=gpu_slots,
        source="torchrun",
    )


def _agent_settings(
    plan: LaunchPlan, args: argparse.Namespace, form: Form, env: Mapping[str, str]
) -> LaunchPlan:
    """torchrun's settings the agent takes: role, local address; the store host chosen by
    torch (its hostname match) unless this node is known to be node 0; OMP_NUM_THREADS."""
    setup = plan.elastic
    if setup is None:
        return plan
    from hpclaunch.model.elastic import parse_rendezvous_conf

    conf = dict(setup.rendezvous_conf)
    if form.kind == "rendezvous" and "is_host" not in parse_rendezvous_conf(args.rdzv_conf):
        conf.pop("is_host", None)
    setup = setup._replace(rendezvous_conf=conf, role=args.role, local_addr=args.local_addr)
    workers = plan.workers
    if "OMP_NUM_THREADS" not in env and len(workers) > 1:
        workers = tuple(
            spec._replace(env=tuple({"OMP_NUM_THREADS": "1", **dict(spec.env)}.items()))
            for spec in workers
        )
    return plan._replace(elastic=setup, workers=workers)


__all__ = ["TorchrunLaunch", "choose_form", "plan_launch", "torchrun_variables"]
