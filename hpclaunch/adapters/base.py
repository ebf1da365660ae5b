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

from typing import Dict, Mapping, NamedTuple, Optional, Protocol, Tuple

from hpclaunch.adapters.mpi_identity import is_mpi_identity_var
from hpclaunch.errors import UsageError
from hpclaunch.world import World


class WorldOptions(NamedTuple):
    """The launcher flags that shape a World. ``None`` means "not given": the adapter decides."""

    node_rank: Optional[int] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    world_info: Optional[str] = None
    nproc_per_node: Optional[int] = None

    def check(self) -> None:
        """Refuse values no adapter could honour, naming the flag (shared by CLI and API)."""
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise UsageError(f"--nproc_per_node {self.nproc_per_node} must be at least 1")
        if self.node_rank is not None and self.node_rank < 0:
            raise UsageError(f"--node_rank {self.node_rank} must be >= 0")
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            raise UsageError(f"--master_port {self.master_port} is out of range: use 1..65535")


class Adapter(Protocol):
    """A source of Worlds. Every member is required; :class:`BaseAdapter` has defaults."""

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
        """Called once, last, with the status the launcher exits with (MPI ends its job here)."""
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


#: The members :func:`hpclaunch.adapters.load` checks a plug-in for.
PROTOCOL_METHODS = ("detect", "world", "notes", "worker_environment", "finish")
