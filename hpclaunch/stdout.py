"""The launcher's own stdout (``--dry-run``'s plan, ``--version``, ``--help``): every byte is
written, or the user reads one line saying why not.

``sys.stdout`` hides both ways this output is lost: with fd 1 closed at start-up (``>&-``)
it is None, and a full or failing file (``> /dev/full``) fails only at the flush at exit,
after argparse has swallowed the error and the command has reported success. Writing with
``os.write`` and raising :class:`~hpclaunch.errors.OutputError` on any failure makes both
one ``hpclaunch: error:`` line and exit status 1.
"""

from __future__ import annotations

import os

from hpclaunch.errors import OutputError


class Stdout:
    """File descriptor 1 as a text stream that raises :class:`OutputError` for any loss.

    ``closed_at_start``: fd 1 was closed when the launcher started (it now holds /dev/null,
    see :func:`hpclaunch.reporter.reopen_closed_standard_fds`), so nothing can reach anyone.
    """

    def __init__(self, what: str, closed_at_start: bool) -> None:
        self.what = what
        self.closed_at_start = closed_at_start

    def write(self, text: str) -> int:
        if self.closed_at_start:
            raise OutputError(
                f"cannot write {self.what}: stdout is closed (>&-); redirect it to a file or pipe"
            )
        view = memoryview(text.encode())
        while view:
            try:
                written = os.write(1, view)
            except InterruptedError:
                continue
            except OSError as exc:
                raise OutputError(
                    f"cannot write {self.what} to stdout ({exc.strerror or exc}): "
                    "redirect stdout to a file or pipe that can take it"
                ) from None
            view = view[written:]
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered here (:meth:`write` has written everything)."""
