"""Elastic mode: this node's workers under torch's elastic agent.

* :mod:`~hpclaunch.spawner.elastic.launcher` -- :func:`run_elastic`, the launcher's loop;
* :mod:`~hpclaunch.spawner.elastic.agent` -- the forked child that runs torch's agent;
* :mod:`~hpclaunch.spawner.elastic.worker` -- the first program each worker runs (standard
  library only; run by path).

The pure half (node bounds, rendezvous settings, the worker command) is
:mod:`hpclaunch.model.elastic`. Importing this package imports nothing.
"""
