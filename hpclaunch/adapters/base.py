"""What every adapter is: the public protocol a source of Worlds implements.

An adapter turns one kind of launch environment (explicit flags, a Slurm step, an MPI job,
this machine alone, or a scheduler a plug-in adds) into a :class:`~hpclaunch.world.World`.
Adapters are handed the environment rather than reading ``os.environ``, so tests need no
patching and a forced adapter can be tried on any environment. They never spawn anything,
never write the environment and never print: problems are raised as
:class:`~hpclaunch.errors.AdapterError` (one line that says what is wrong and how to fix
it), and what a user should merely know is handed back by :meth:`Adapter.notes` for the
caller to report.

The protocol is part of hpclaunch's public API (see docs/api.md): plug-ins implement it,
most simply by subclassing :class:`BaseAdapter`, which supplies the three hooks most
sources do not need to change.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Protocol, Tuple

from hpclaunch.adapters.mpi_identity import is_mpi_identity_var
from hpclaunch.errors import AdapterError
from hpclaunch.machine import gpus as machine_gpus
from hpclaunch.machine import network
from hpclaunch.model.world import World, is_decimal
from hpclaunch.options import WorldOptions as WorldOptions  # what adapters are given


class Adapter(Protocol):
    """A source of Worlds. ``name``, ``detect`` and ``world`` are what an adapter must have;
    a plug-in without ``notes``, ``worker_environment`` or ``finish`` gets
    :class:`BaseAdapter`'s (what subclassing it gives too)."""

    #: The ``--adapter`` name; also the ``adapter`` key of ``--dry-run``.
    name: str

    def detect(self, env: Mapping[str, str]) -> bool:
        """Cheap and import-free: does ``env`` look like this source's launch?"""
        ...

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        """Build the World, or raise :class:`~hpclaunch.errors.AdapterError` naming the fix."""
        ...

    def notes(self) -> Tuple[str, ...]:
        """What the user should know about the World just built (reported at info level)."""
        ...

    def worker_environment(self, env: Mapping[str, str]) -> Dict[str, str]:
        """The environment workers inherit (before hpclaunch's own variables are added)."""
        ...

    def finish(self, exit_code: int) -> None:
        """Called once, last, with the status the launcher exits with (MPI ends its job here).

        Called on an instance of the adapter that built the World, not necessarily the same
        object: what must last until then belongs to the process (MPI's own state), not to
        the instance.
        """
        ...


def without_mpi_identity(env: Mapping[str, str]) -> Dict[str, str]:
    """``env`` minus an MPI launcher's per-process identity.

    Workers are not the processes an MPI launcher (or ``srun --mpi=pmix``) started: an
    inherited PMI/PMIx identity would make a worker's ``MPI_Init`` claim to be the launcher's
    rank instead of starting its own. So every adapter drops it by default, whatever the
    source of the world.
    """
    return {k: v for k, v in env.items() if not is_mpi_identity_var(k)}


class BaseAdapter:
    """Defaults for the hooks most adapters need not change; subclasses set ``name`` and
    implement :meth:`detect` and :meth:`world`."""

    name = ""
    #: Set by :meth:`world` when there is something to tell (see :meth:`notes`).
    _notes: Tuple[str, ...] = ()

    def detect(self, env: Mapping[str, str]) -> bool:
        raise NotImplementedError

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        raise NotImplementedError

    def notes(self) -> Tuple[str, ...]:
        return self._notes

    def worker_environment(self, env: Mapping[str, str]) -> Dict[str, str]:
        return without_mpi_identity(env)

    def finish(self, exit_code: int) -> None:
        return None


class MachineAdapter(BaseAdapter):
    """A scheduler adapter that also asks this machine its host name (to find itself among
    the job's hosts) and its visible GPUs; both are injectable, so tests give recorded ones."""

    def __init__(
        self,
        hostname: Callable[[], str] = network.hostname,
        gpu_probe: machine_gpus.GpuProbe = machine_gpus.visible_gpus,
    ) -> None:
        self._hostname = hostname
        self._gpu_probe = gpu_probe


def node_slots(
    gpus: Tuple[int, ...], gpu_ids_usable: bool, nproc_per_node: Optional[int]
) -> Tuple[Tuple[int, ...], bool]:
    """Slot ids for this node and whether they are GPU ids. Pure.

    One slot per GPU, else one; ``--nproc_per_node`` overrides. Asking for more workers than
    GPUs (CPU training on a GPU box) gives plain slots, and then no CUDA_VISIBLE_DEVICES is
    set: there is no honest device to give each worker.
    """
    if nproc_per_node is None:
        if gpus:
            return gpus, gpu_ids_usable
        return (0,), False
    if nproc_per_node < 1:
        raise AdapterError(f"--nproc_per_node {nproc_per_node} must be at least 1")
    if gpus and nproc_per_node <= len(gpus):
        return gpus[:nproc_per_node], gpu_ids_usable
    return tuple(range(nproc_per_node)), False


#: Derived master ports lie in [PORT_BASE, PORT_BASE + PORT_SPAN): unprivileged and below
#: Linux's default ephemeral range (32768-60999), where a client socket could hold them.
PORT_BASE = 15000
PORT_SPAN = 16384
#: Steps of one job get consecutive ports; a job's block is this wide, so consecutive jobs
#: (the ones likely to share a node) do not collide unless one has this many live steps.
PORT_STEPS_PER_JOB = 16


def derive_master_port(job_id: int, step_slot: int) -> int:
    """The port every node of step ``step_slot`` of job ``job_id`` computes alike."""
    return PORT_BASE + (job_id * PORT_STEPS_PER_JOB + step_slot % PORT_STEPS_PER_JOB) % PORT_SPAN


def master_port(options: WorldOptions, job_id: int, step_slot: int) -> int:
    """``--master_port`` when given, else :func:`derive_master_port`."""
    if options.master_port is not None:
        return options.master_port
    return derive_master_port(job_id, step_slot)


def optional_int(env: Mapping[str, str], name: str) -> Optional[int]:
    """``env[name]`` as a non-negative integer, None when unset; garbage refused by name."""
    value = env.get(name, "").strip()
    if not value:
        return None
    if not is_decimal(value):
        raise AdapterError(f"{name}={value!r} is not a non-negative integer")
    return int(value)


#: What every adapter must have; the rest of the protocol has :class:`BaseAdapter`'s defaults.
REQUIRED_METHODS = ("detect", "world")
#: The protocol's optional members.
OPTIONAL_METHODS = ("notes", "worker_environment", "finish")
