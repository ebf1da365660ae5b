"""The world of a Kubeflow training pod: a PyTorchJob (training operator v1) or a TrainJob
(Kubeflow Trainer v2), so that ``hpclaunch train.py`` runs unchanged where the operator
would have run ``torchrun train.py``.

Both operators describe torchrun's static form in ``PET_*`` variables, which torchrun reads
for its flags (so this adapter is the torchrun adapter, auto-detected by ``PET_NNODES``):

* Trainer v2 (TrainJob, torch runtime; ``pkg/runtime/framework/plugins/torch``): ``PET_NNODES``,
  ``PET_NPROC_PER_NODE`` (default ``auto``), ``PET_NODE_RANK`` (the pod's job-completion
  index), ``PET_MASTER_ADDR`` (``<job>-trainer-node-0-0.<job>``), ``PET_MASTER_PORT`` (29500).
* v1 PyTorchJob (v1.7 to v1.9, ``pkg/controller.v1/pytorch``): the same ``PET_NNODES``,
  ``PET_NPROC_PER_NODE`` (default ``auto``), ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
  ``PET_MASTER_PORT`` (the master's ``pytorchjob-port``, default 23456), plus torch's own
  ``MASTER_ADDR``/``MASTER_PORT``, and the trap: ``RANK`` is the *pod's* index (the node
  rank: master 0, worker i is i+1) while ``WORLD_SIZE`` counts *processes* (pods x
  ``nprocPerNode`` when that is a number, else pods). hpclaunch reads the node rank from
  ``PET_NODE_RANK``, checks that ``RANK`` agrees and that ``WORLD_SIZE`` is what the
  operator computes, and gives every worker its own ``RANK``/``WORLD_SIZE``.

An elastic PyTorchJob (``elasticPolicy``: ``PET_RDZV_BACKEND``, ``PET_NNODES=MIN:MAX``) is
torchrun's rendezvous form: refused here with ``hpclaunch-torchrun``, which runs it.
A plain JobSet sets no master and no ``PET_*``: one line in the pod's command gives them
(docs/cli.md, "Kubernetes").
"""

from __future__ import annotations

from typing import Mapping, Tuple

from hpclaunch.adapters import kubeflow_pod
from hpclaunch.adapters.base import optional_int
from hpclaunch.adapters.torchrun import (
    StaticSettings,
    TorchrunAdapter,
    read_static,
    static_world,
)
from hpclaunch.errors import AdapterError
from hpclaunch.model.world import World, is_decimal
from hpclaunch.options import WorldOptions


def _required(env: Mapping[str, str], names: Tuple[str, ...], why: str) -> str:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    raise AdapterError(f"{names[0]} is not set: {why}")


def check_operator_ranks(env: Mapping[str, str], settings: StaticSettings) -> None:
    """v1's ``RANK`` (the pod's index) and ``WORLD_SIZE`` (processes) must be the operator's
    own for this job: anything else means the variables are not the operator's."""
    rank = optional_int(env, "RANK")
    if rank is not None and rank != settings.node_rank:
        raise AdapterError(
            f"RANK={rank} but PET_NODE_RANK={settings.node_rank}: a PyTorchJob sets both to "
            "the pod's index; the pod's environment is not the training operator's"
        )
    size = optional_int(env, "WORLD_SIZE")
    if size is None:
        return
    nproc = settings.nproc.strip()
    expected = settings.nnodes * (int(nproc) if is_decimal(nproc) else 1)
    if size != expected:
        raise AdapterError(
            f"WORLD_SIZE={size} but PET_NNODES={settings.nnodes} and PET_NPROC_PER_NODE="
            f"{nproc or '?'} make {expected} (the operator's pods x processes): the pod's "
            "environment is not the training operator's"
        )


class KubeflowAdapter(TorchrunAdapter):
    """World from a Kubeflow PyTorchJob v1 or TrainJob (Trainer v2) pod's ``PET_*``."""

    name = "kubeflow"

    def detect(self, env: Mapping[str, str]) -> bool:
        return kubeflow_pod(env)

    def world(self, env: Mapping[str, str], options: WorldOptions) -> World:
        if env.get("PET_RDZV_BACKEND", "").strip() or ":" in env.get("PET_NNODES", ""):
            raise AdapterError(
                f"this pod's job is elastic (PET_NNODES={env.get('PET_NNODES', '').strip()}, "
                f"PET_RDZV_BACKEND={env.get('PET_RDZV_BACKEND', '').strip() or '?'}): start it "
                "with hpclaunch-torchrun, which runs torchrun's rendezvous form in elastic mode"
            )
        node_rank = _required(
            env, ("PET_NODE_RANK",),
            "the operator sets it to the pod's index; outside the operator (a JobSet) add "
            "PET_NODE_RANK=$JOB_COMPLETION_INDEX",
        )
        master = _required(
            env, ("PET_MASTER_ADDR", "MASTER_ADDR"),
            "it names the pod of node rank 0; outside the operator (a JobSet) add "
            "PET_MASTER_ADDR=<jobset>-<job>-0-0.<jobset>",
        )
        overlay = dict(env)
        overlay["PET_NODE_RANK"] = node_rank
        overlay["PET_MASTER_ADDR"] = master
        overlay.setdefault("PET_MASTER_PORT", env.get("MASTER_PORT", "").strip() or "29500")
        overlay.setdefault("PET_RDZV_ID", f"kubeflow-{master}")
        settings = read_static(overlay)
        if options.node_rank is not None and options.node_rank != settings.node_rank:
            raise AdapterError(
                f"--node_rank {options.node_rank} contradicts PET_NODE_RANK="
                f"{settings.node_rank}: in a Kubeflow pod the node rank is the pod's; drop "
                "--node_rank"
            )
        if options.nproc_per_node is None:
            check_operator_ranks(env, settings)
        return static_world(settings, overlay, options, self._hostname(), self._gpu_probe)


__all__ = ["KubeflowAdapter", "check_operator_ranks"]
