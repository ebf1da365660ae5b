"""``python -m hpclaunch`` is the same as the ``hpclaunch`` command."""

from hpclaunch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
