"""Elastic mode: a node whose workers have all finished closes the rendezvous at once.

torch's agent, once every worker of its node has exited 0, waits in its *exit barrier* (300 s)
for the other agents to finish too, and never joins another round. If a worker on another
node fails just then and its agent restarts, that agent waits for a next round which the
finished node will never join (until ``join_timeout``, 600 s), while the finished node
waits at its barrier for it: both hang, under torchrun as well. A finished node cannot give
a new round what it needs, so it says so at once: it closes the rendezvous, which is what
torch's own shutdown does anyway when that agent exits. The restarting agent's join then
fails at once with ``RendezvousClosedError`` (explained by the launcher), the job ends with
a clear message instead of hanging, and under Slurm or MPI that failure ends every node
(:mod:`hpclaunch.spawner.scheduler`, ``MPI_Abort``). A peer whose workers are still running
is not disturbed: a closed rendezvous refuses new rounds, nothing else.

The moment is observed through torch's public metrics API: the agent publishes
``workers.<role>.succeeded`` right before it enters the barrier. The rendezvous is closed
through torch's public handler API (a second handler, a client of the same store). Runs in
the agent process (it imports torch).
"""

from __future__ import annotations

from typing import Any

from hpclaunch.reporter import Reporter


def close_when_finished(config: Any, voice: Reporter) -> None:
    """Close ``config``'s rendezvous once this node's workers have succeeded.

    ``config`` is the agent's ``LaunchConfig``. A failure to close is reported at debug
    level and otherwise ignored: it only brings torch's own behaviour back.
    """
    from torch.distributed.elastic import metrics

    succeeded = f"workers.{config.role}.succeeded"

    class CloseWhenFinished(metrics.MetricHandler):  # type: ignore[misc,name-defined]
        """Sees every torchelastic metric; acts on the first "succeeded"."""

        def __init__(self) -> None:
            self.done = False

        def emit(self, metric_data: Any) -> None:
            if self.done or metric_data.name != succeeded:
                return
            self.done = True
            voice.debug(
                "elastic: the workers here have finished; closing the rendezvous to new "
                "rounds and waiting for the other nodes' agents (torch's exit barrier)"
            )
            try:
                _close(config)
            except Exception as exc:  # noqa: BLE001 - never break the agent's own exit
                voice.debug(f"elastic: could not close the rendezvous: {exc!r}")

    metrics.configure(CloseWhenFinished(), "torchelastic")  # type: ignore[attr-defined]


def _close(config: Any) -> None:
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

    conf = dict(config.rdzv_configs)
    conf["is_host"] = "false"  # a client of the store the agent already hosts or reaches
    params = RendezvousParameters(
        backend=config.rdzv_backend,
        endpoint=config.rdzv_endpoint,
        run_id=config.run_id,
        min_nodes=config.min_nodes,
        max_nodes=config.max_nodes,
        local_addr=config.local_addr,
        **conf,
    )
    get_rendezvous_handler(params).set_closed()  # type: ignore[no-untyped-call]


__all__ = ["close_when_finished"]
