"""``python -m hpclaunch.torchrun`` is the same as the ``hpclaunch-torchrun`` command."""

from hpclaunch.torchrun import main

if __name__ == "__main__":
    raise SystemExit(main())
