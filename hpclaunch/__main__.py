"""``python -m hpclaunch`` is the same as the ``hpclaunch`` command; :func:`main` is both.

Its first line holds the launcher's signals, before the rest of hpclaunch is imported:
from then on a SIGINT cannot raise a KeyboardInterrupt and a SIGUSR1 cannot kill the
launcher (docs/cli.md, Signals).
"""

from __future__ import annotations

from typing import Optional, Sequence  # loaded already, by the package's __init__


def main(argv: Optional[Sequence[str]] = None) -> int:
    from hpclaunch.spawner.inbox import hold_signals

    signals = hold_signals()
    from hpclaunch import cli

    return cli.main(argv, signals)


if __name__ == "__main__":
    raise SystemExit(main())
