"""What happened during a launch, as named events: the spawner says them, a recorder keeps them.

The supervisor (static and elastic) and the teardown call :meth:`Events.emit` at each point a
job's record needs: the launch, each worker spawned, each signal received and what was done
with it, output dropped, a stall and a stack dump, each worker's exit, each restart, the
teardown, the end. Where they go is the recorder's business (the JSON event log, the metrics
file); without one, :class:`NoEvents` keeps nothing and costs one method call per event,
never one per line of output.

Event names and their fields are documented with the event log's schema (docs/events.md).
"""

from __future__ import annotations

from typing import Any, Protocol


class Events(Protocol):
    """Where the spawner's events go."""

    def emit(self, name: str, **fields: Any) -> None:
        """Record event ``name``; must never raise and never block for long."""
        ...

    def close(self) -> None:
        """The launch is over: write what is still held (the final metrics)."""
        ...


class NoEvents:
    """No recorder: every event is dropped at once."""

    def emit(self, name: str, **fields: Any) -> None:
        return None

    def close(self) -> None:
        return None


__all__ = ["Events", "NoEvents"]
