"""Elastic mode: this node's workers under torch's elastic agent.

* :mod:`~hpclaunch.spawner.elastic.config` -- the pure half: options, node bounds,
  rendezvous settings and the worker command, decided when the plan is built (so
  ``--dry-run`` needs neither torch nor a process);
* :mod:`~hpclaunch.spawner.elastic.launcher` -- :func:`run_elastic`, the launcher's loop and
  the forked agent (imported only to run);
* :mod:`~hpclaunch.spawner.elastic.worker` -- the first program each worker runs (standard
  library only; run by path, never imported).

Importing this package imports the pure half only.
"""

from __future__ import annotations

from hpclaunch.spawner.elastic.config import (
    DEFAULT_MAX_RESTARTS,
    WORKER_SHIM,
    ElasticOptions,
    ElasticSetup,
    describe,
    elastic_setup,
    node_bounds,
    parse_rendezvous_conf,
    require_torch,
    worker_argv_template,
)

__all__ = [
    "DEFAULT_MAX_RESTARTS",
    "ElasticOptions",
    "ElasticSetup",
    "WORKER_SHIM",
    "describe",
    "elastic_setup",
    "node_bounds",
    "parse_rendezvous_conf",
    "require_torch",
    "worker_argv_template",
]
