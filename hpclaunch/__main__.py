"""``python -m hpclaunch`` is the same as the ``hpclaunch`` command; :func:`main` is both.

Its first line holds the launcher's signals (:mod:`hpclaunch.hold`), before the rest of
hpclaunch is imported: from then on a SIGINT cannot raise a KeyboardInterrupt and a SIGUSR1
cannot kill the launcher (docs/cli.md, Signals).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing before the hold
if TYPE_CHECKING:
    from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from hpclaunch.hold import hold

    held = hold()
    from hpclaunch import cli
    from hpclaunch.spawner.inbox import SignalInbox

    return cli.main(argv, SignalInbox(held))


if __name__ == "__main__":
    raise SystemExit(main())
