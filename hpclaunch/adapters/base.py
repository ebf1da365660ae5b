"""What every adapter is: ``detect(env)`` and ``world(env, options)``.

Adapters are handed the environment rather than reading ``os.environ`` so that tests need
no patching and a forced adapter can be tried on any environment. They never spawn
anything and never write the environment.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional

try:  # Python >= 3.8
    from typing import Protocol
except ImportError:  # pragma: no cover
    from typing_extensions import Protocol  # type: ignore[assignment]

from hpclaunch.world import World


class WorldOptions(NamedTuple):
    """The launcher flags that shape a World. ``None`` means "not given": the adapter decides."""

    node_rank: Optional[int] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    world_info: Optional[str] = None
    nproc_per_node: Optional[int] = None


class Adapter(Protocol):
    """A source of Worlds (explicit flags, Slurm, MPI, this machine alone)."""

    name: str

    def detect(self, env: Mapping[str, str]) -> bool:
        """Cheap and import-free: does ``env`` look like this source's launch?"""
        ...

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        """Build the World, or raise :class:`~hpclaunch.errors.AdapterError` naming the fix."""
        ...
