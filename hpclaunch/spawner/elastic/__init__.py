"""Elastic mode: this node's workers under torch's elastic agent.

* :mod:`~hpclaunch.spawner.elastic.config` -- the pure half: options, node bounds,
  rendezvous settings and the worker command, decided when the plan is built (so
  ``--dry-run`` needs neither torch nor a process);
* :mod:`~hpclaunch.spawner.elastic.launcher` -- :func:`run_elastic`, the launcher's loop and
  the forked agent (imported only to run);
* :mod:`~hpclaunch.spawner.elastic.worker` -- the first program each worker runs (standard
  library only; run by path), whose :func:`become_worker` static workers share.

Importing this package imports nothing: the static supervisor imports ``worker`` on every
launch, and the pure half's ``dataclasses`` (which imports ``inspect``) would cost every
launch ~15 ms of start-up.
"""
