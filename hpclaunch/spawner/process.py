"""What one launcher process holds from its first line to its exit: its signals and console.

Signals are held in a :class:`~hpclaunch.spawner.inbox.SignalInbox` from the first line of
the CLI's entry point (or of :func:`hpclaunch.launch`), so none can kill the launcher or raise
in it while it imports, parses or asks MPI for the world; the launch then acts on what
arrived (docs/cli.md, Signals). The console is opened for the launch and stays open after
it: the CLI's failure summary goes through it after the workers' output, and
:meth:`LauncherProcess.close_console` delivers everything it holds before the launcher
exits (docs/cli.md, Console and logs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from hpclaunch.spawner.inbox import SignalInbox

if TYPE_CHECKING:
    from hpclaunch.spawner.output.console import Console


class LauncherProcess:
    """The launcher's signal inbox (held by whoever made it) and its console, once opened."""

    def __init__(self, inbox: SignalInbox) -> None:
        self.inbox = inbox
        self._console: Optional[Console] = None

    def console(self) -> Console:
        """The console (the launcher's own stdout and stderr), opened on first use."""
        if self._console is None:
            from hpclaunch.spawner.output.console import Console

            self._console = Console()
        return self._console

    def stop_signal(self) -> Optional[int]:
        """A SIGINT/TERM/HUP that arrived and nothing has acted on yet (it stays pending)."""
        return self.inbox.fatal()

    def close_console(self) -> None:
        """Deliver what the console holds (see :meth:`Console.close`) and close it."""
        console, self._console = self._console, None
        if console is not None:
            console.close(self.inbox)
