"""The world torchrun's static form describes, read from torchrun's own ``PET_*`` variables.

torchrun's ``--nnodes N --nproc-per-node P --node-rank R --master-addr A --master-port M``
(and ``--rdzv-id``) fix a world every node knows alone; torchrun reads each of them from
``PET_<FLAG>`` when the flag is not given (its argparse ``env`` action). Three users share
this one reading: ``hpclaunch-torchrun`` (which hands its parsed flags over as ``PET_*``,
the way torchrun itself would take them), the Kubeflow adapter (the training operator sets
exactly these variables in every pod), and ``hpclaunch --adapter torchrun``. Never
auto-detected: ``PET_*`` exported in a shell is a habit, not a job.

Defaults are torchrun's: one node, one worker, node rank 0, master ``127.0.0.1:29500``, run
id ``none``. Only this node's worker count is known here, so every node is assumed to run
as many (as every torchrun recipe does); torchrun's agents would exchange their counts, and
a job whose nodes differ needs the rendezvous form (``hpclaunch-torchrun --rdzv-backend
c10d``). The rendezvous forms (``--nnodes MIN:MAX``, ``--rdzv-backend c10d``,
``--standalone``) are not static worlds: this adapter refuses them, naming the command that
runs them.
"""

from __future__ import annotations

import os
from typing import Mapping, NamedTuple, Tuple

from hpclaunch.adapters.base import MachineAdapter, node_slots
from hpclaunch.errors import AdapterError
from hpclaunch.machine import gpus as machine_gpus
from hpclaunch.model.world import DEFAULT_MASTER_PORT, Host, World, is_decimal
from hpclaunch.options import WorldOptions

#: torchrun's defaults for the static form.
DEFAULT_NNODES = "1:1"
DEFAULT_NPROC = "1"
DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_RUN_ID = "none"

#: What ``--nproc-per-node`` accepts besides a number (torchrun 2.13).
NPROC_WORDS = ("auto", "cpu", "gpu", "xpu")


def parse_nnodes(value: str, what: str = "--nnodes") -> Tuple[int, int]:
    """``"4"`` -> (4, 4); ``"1:4"`` -> (1, 4); anything else, or 0 < min <= max broken, refused."""
    parts = [p.strip() for p in value.split(":")]
    if len(parts) > 2 or not all(is_decimal(p) for p in parts):
        raise AdapterError(f"{what} {value!r}: give a node count N or a range MIN:MAX")
    low, high = int(parts[0]), int(parts[-1])
    if not 0 < low <= high:
        raise AdapterError(f"{what} {value!r}: need 0 < MIN <= MAX")
    return low, high


def parse_endpoint(value: str, default_port: int, what: str) -> Tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` (then ``default_port``, -1: required)."""
    text = value.strip()
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise AdapterError(f"{what} {value!r}: an IPv6 address needs its closing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise AdapterError(f"{what} {value!r}: give HOST:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise AdapterError(f"{what} {value!r}: the host is missing (give HOST:PORT)")
    if not port_text:
        if default_port < 0:
            raise AdapterError(f"{what} {value!r}: the port is missing (give HOST:PORT)")
        return host, default_port
    if not is_decimal(port_text) or int(port_text) > 65535:
        raise AdapterError(f"{what} {value!r}: the port must be a number 0..65535")
    return host, int(port_text)


def cpu_count() -> int:
    """CPUs this process may run on: what torchrun's ``cpu`` and ``auto`` count."""
    return len(os.sched_getaffinity(0))


def xpu_count() -> int:
    """Intel GPUs, as torch counts them: the only count torch alone can give (seconds)."""
    try:
        import torch
    except ImportError:
        raise AdapterError(
            "--nproc-per-node xpu needs torch to count XPUs: install torch, or give a number"
        ) from None
    return int(torch.xpu.device_count()) if torch.xpu.is_available() else 0


def worker_slots(
    spec: str,
    env: Mapping[str, str],
    what: str = "--nproc-per-node",
    gpu_probe: machine_gpus.GpuProbe = machine_gpus.visible_gpus,
) -> Tuple[Tuple[int, ...], bool]:
    """This node's slot ids for torchrun's ``--nproc-per-node``, and whether they are GPU ids.

    A number N: N workers, on GPU slots when there are GPUs for one each (as ``hpclaunch
    --nproc_per_node``); ``gpu``: one per visible GPU, refused without one (torchrun: "Cuda
    is not available"); ``cpu``: one per CPU this process may use; ``auto``: one per GPU,
    else one per CPU; ``xpu``: one per Intel GPU (counted by torch). GPUs are counted without
    torch (:mod:`hpclaunch.machine.gpus`).
    """
    text = spec.strip()
    if is_decimal(text):
        count = int(text)
        if count < 1:
            raise AdapterError(f"{what} {spec!r}: run at least one worker per node")
        ids, usable = gpu_probe(env)
        return node_slots(ids, usable, count)
    if text in ("gpu", "auto"):
        ids, usable = gpu_probe(env)
        if ids:
            return ids, usable
        if text == "gpu":
            raise AdapterError(
                f"{what} gpu: no GPU is visible here (CUDA_VISIBLE_DEVICES, or the driver): "
                "give a number, or cpu"
            )
        return tuple(range(cpu_count())), False
    if text == "cpu":
        return tuple(range(cpu_count())), False
    if text == "xpu":
        count = xpu_count()
        if count < 1:
            raise AdapterError(f"{what} xpu: torch sees no XPU here: give a number")
        return tuple(range(count)), False
    raise AdapterError(
        f"{what} {spec!r}: give a number of workers, or one of {', '.join(NPROC_WORDS)}"
    )


def rank_named_hosts(
    count: int, node_rank: int, this_name: str, slots: Tuple[int, ...], master: str = ""
) -> Tuple[Host, ...]:
    """The world's hosts when only the count is known: ``node<i>``, this node by its name,
    node 0 by the master's address.

    Other nodes' names are never needed (each launcher starts its own node's workers); they
    are only shown. Their slots are 0..n-1, this node's its own (GPU ids).
    """
    names = [f"node{index}" for index in range(count)]
    if this_name and this_name not in names:
        names[node_rank] = this_name
    if node_rank != 0 and master and master not in names:
        names[0] = master
    others = tuple(range(len(slots)))
    return tuple(
        Host(name, slots if index == node_rank else others) for index, name in enumerate(names)
    )


class StaticSettings(NamedTuple):
    """torchrun's static form, as read from ``PET_*`` (strings checked, not yet a World)."""

    nnodes: int
    nproc: str
    node_rank: int
    master_addr: str
    master_port: int
    run_id: str


def _pet(env: Mapping[str, str], flag: str, default: str) -> str:
    """torchrun's rule: ``PET_<FLAG>`` when set (even to ""), else the default."""
    value = env.get("PET_" + flag)
    return default if value is None else value


def _int_setting(env: Mapping[str, str], flag: str, default: int) -> int:
    value = _pet(env, flag, str(default)).strip()
    if not is_decimal(value):
        raise AdapterError(f"PET_{flag}={value!r} is not a non-negative integer")
    return int(value)


def read_static(env: Mapping[str, str]) -> StaticSettings:
    """torchrun's static settings from ``PET_*``; a rendezvous form is refused (see module)."""
    backend = _pet(env, "RDZV_BACKEND", "static").strip()
    if backend != "static":
        raise AdapterError(
            f"PET_RDZV_BACKEND={backend} is torchrun's rendezvous form, not a static world: "
            "start the job with hpclaunch-torchrun, which runs it in elastic mode"
        )
    if _pet(env, "STANDALONE", "0").strip() not in ("", "0"):
        raise AdapterError(
            "PET_STANDALONE asks for torchrun's standalone form: start the job with "
            "hpclaunch-torchrun --standalone (or unset PET_STANDALONE)"
        )
    low, high = parse_nnodes(_pet(env, "NNODES", DEFAULT_NNODES), "PET_NNODES")
    if low != high:
        raise AdapterError(
            f"PET_NNODES={low}:{high} asks for elastic membership: start the job with "
            "hpclaunch-torchrun --rdzv-backend c10d --rdzv-endpoint HOST:PORT"
        )
    master_addr = _pet(env, "MASTER_ADDR", DEFAULT_MASTER_ADDR).strip()
    master_port = _int_setting(env, "MASTER_PORT", DEFAULT_MASTER_PORT)
    endpoint = _pet(env, "RDZV_ENDPOINT", "").strip()
    if endpoint:  # torchrun's static form takes its master from an endpoint when given
        master_addr, master_port = parse_endpoint(endpoint, -1, "PET_RDZV_ENDPOINT")
    return StaticSettings(
        nnodes=high,
        nproc=_pet(env, "NPROC_PER_NODE", DEFAULT_NPROC),
        node_rank=_int_setting(env, "NODE_RANK", 0),
        master_addr=master_addr,
        master_port=master_port,
        run_id=_pet(env, "RDZV_ID", DEFAULT_RUN_ID),
    )


def static_world(
    settings: StaticSettings,
    env: Mapping[str, str],
    options: WorldOptions,
    this_name: str,
    gpu_probe: machine_gpus.GpuProbe = machine_gpus.visible_gpus,
) -> World:
    """The World of ``settings``; ``options`` (the launcher's flags) win where given."""
    node_rank = settings.node_rank if options.node_rank is None else options.node_rank
    if node_rank >= settings.nnodes:
        raise AdapterError(
            f"node rank {node_rank} is outside the {settings.nnodes} node(s): node ranks count "
            f"from 0 to {settings.nnodes - 1}"
        )
    if options.nproc_per_node is not None:
        slots, gpu_slots = worker_slots(
            str(options.nproc_per_node), env, "--nproc_per_node", gpu_probe
        )
    else:
        slots, gpu_slots = worker_slots(settings.nproc, env, "PET_NPROC_PER_NODE", gpu_probe)
    master_port = settings.master_port if options.master_port is None else options.master_port
    if not 1 <= master_port <= 65535:
        raise AdapterError(f"master port {master_port} is out of range: use 1..65535")
    master_addr = options.master_addr or settings.master_addr
    return World(
        hosts=rank_named_hosts(settings.nnodes, node_rank, this_name, slots, master_addr),
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        run_id=settings.run_id,
        gpu_slots=gpu_slots,
    )


class TorchrunAdapter(MachineAdapter):
    """World from torchrun's static settings in ``PET_*`` variables (torchrun's defaults)."""

    name = "torchrun"

    def detect(self, env: Mapping[str, str]) -> bool:
        return False  # chosen by hpclaunch-torchrun or --adapter torchrun, never guessed

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        return static_world(read_static(env), env, options, self._hostname(), self._gpu_probe)


__all__ = [
    "StaticSettings",
    "TorchrunAdapter",
    "parse_endpoint",
    "parse_nnodes",
    "rank_named_hosts",
    "read_static",
    "static_world",
    "worker_slots",
]
