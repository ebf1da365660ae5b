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

from typing import Any, Callable, Mapping, Optional, Protocol

#: rank -> ``time.monotonic()`` of its latest sign of life (output, heartbeat).
Progress = Mapping[int, float]


class Events(Protocol):
    """Where the spawner's events go."""

    def emit(self, name: str, **fields: Any) -> None:
        """Record event ``name``; must never raise and never block for long."""
        ...

    def next_timeout(self) -> Optional[float]:
        """Seconds until the recorder has something to do (rewrite the metrics); None: never.
        The event loop wakes for it, then calls :meth:`on_wake`."""
        ...

    def on_wake(self, progress: Callable[[], Progress]) -> None:
        """After every wake-up of the event loop; ``progress`` gives the supervisor's progress
        stamps, called only when the recorder needs them."""
        ...

    def close(self) -> None:
        """The launch is over: write what is still held (the final metrics)."""
        ...


class NoEvents:
    """No recorder: every event is dropped at once."""

    def emit(self, name: str, **fields: Any) -> None:
        return None

    def next_timeout(self) -> Optional[float]:
        return None

    def on_wake(self, progress: Callable[[], Progress]) -> None:
        return None

    def close(self) -> None:
        return None


__all__ = ["Events", "NoEvents", "Progress"]
