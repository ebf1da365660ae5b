"""``python -m hpclaunch.report``: the same as the ``hpclaunch-report`` command
(:mod:`hpclaunch.jobreport`). Not to be confused with :mod:`hpclaunch.spawner.report`, the
failure summary of one launch."""

from __future__ import annotations

import sys

from hpclaunch.jobreport import main

if __name__ == "__main__":
    sys.exit(main())
