"""Adapter registry and auto-detection: one ordered list, with the reason for each place.

Order (first whose ``detect`` is true wins under ``--adapter auto``):

1. ``explicit`` -- ``--world_info`` was given: the user (or DeepSpeed's runner) said exactly
   what the world is, so no environment may override it.
2. ``slurm`` -- inside a Slurm job step. Checked before MPI because ``srun`` of an MPI build
   exports PMI variables too, and Slurm's own variables are the more precise description.
   (The adapter itself handles an sbatch script outside ``srun``.)
3. ``pbs`` -- a PBS Pro / OpenPBS job (``PBS_JOBID`` + ``PBS_NODEFILE``), and
4. ``lsf`` -- an LSF job (``LSB_JOBID`` + ``LSB_MCPU_HOSTS`` or ``LSB_DJOB_HOSTFILE``).
   After Slurm, whose step variables describe the very step; before MPI, because on these
   machines hpclaunch is started one per node by ``mpiexec``/``mpirun``/``jsrun`` as often as
   by ``pbsdsh``, and the scheduler's host list gives the world without mpi4py or a
   collective. The adapters refuse a launch whose MPI launcher started a different number
   of hpclaunch than the job has hosts (``--adapter mpi`` runs such a subset).
5. ``mpi`` -- an MPI launcher's environment (OpenMPI/PMIx, MPICH/Hydra, ...).
6. ``kubeflow`` -- a Kubeflow PyTorchJob (v1) or TrainJob (Trainer v2) pod: torchrun's
   ``PET_NNODES`` is set. After MPI: an MPI launcher that started this very process (an
   MPIJob pod) is the more direct evidence.
7. plug-ins (entry-point group ``hpclaunch.adapters``), by name: a site's scheduler is better
   evidence than none, but the built-ins above have their own, which a plug-in cannot
   overrule unless named with ``--adapter``.
8. ``local`` -- no scheduler at all: this machine alone.

``torchrun`` (the world torchrun's static flags describe, from ``PET_*`` variables) is never
detected: ``hpclaunch-torchrun`` chooses it, or ``--adapter torchrun``.

Modules are imported only when chosen, so that detection stays cheap and mpi4py is never
imported unless the MPI adapter runs: every built-in is detected by :data:`ENV_DETECTORS`
(variable checks, no import of its module; each adapter's own ``detect`` is the same
function); plug-ins are listed (a directory scan, no import) only when a name is not a
built-in's or nothing but ``local`` detected.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Mapping, Optional, Tuple

from hpclaunch.adapters.base import Adapter, BaseAdapter
from hpclaunch.adapters.mpi_identity import MPI_RANK_VARS
from hpclaunch.errors import UsageError
from hpclaunch.options import WorldOptions

#: name -> (module, class), in detection order.
ADAPTERS: Dict[str, Tuple[str, str]] = {
    "explicit": ("hpclaunch.adapters.explicit", "ExplicitAdapter"),
    "slurm": ("hpclaunch.adapters.slurm", "SlurmAdapter"),
    "pbs": ("hpclaunch.adapters.pbs", "PBSAdapter"),
    "lsf": ("hpclaunch.adapters.lsf", "LSFAdapter"),
    "mpi": ("hpclaunch.adapters.mpi", "MPIAdapter"),
    "kubeflow": ("hpclaunch.adapters.kubeflow", "KubeflowAdapter"),
    "torchrun": ("hpclaunch.adapters.torchrun", "TorchrunAdapter"),
    "local": ("hpclaunch.adapters.local", "LocalAdapter"),
}


def _set(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


def slurm_job(env: Mapping[str, str]) -> bool:
    """Inside a Slurm job: a step, or an sbatch/salloc shell (where the adapter decides)."""
    return _set(env, "SLURM_JOB_ID")


def mpi_process(env: Mapping[str, str]) -> bool:
    """Started by an MPI launcher (any of the variables only a process manager sets)."""
    return any(env.get(var) for var in MPI_RANK_VARS)


def pbs_job(env: Mapping[str, str]) -> bool:
    """Inside a PBS Pro / OpenPBS job, on one of its hosts."""
    return _set(env, "PBS_JOBID") and _set(env, "PBS_NODEFILE")


def lsf_job(env: Mapping[str, str]) -> bool:
    """Inside an LSF job: its id and one of the two host lists LSF gives every task."""
    return _set(env, "LSB_JOBID") and (
        _set(env, "LSB_MCPU_HOSTS") or _set(env, "LSB_DJOB_HOSTFILE")
    )


def kubeflow_pod(env: Mapping[str, str]) -> bool:
    """A pod the Kubeflow training operator (v1 PyTorchJob, Trainer v2 TrainJob) set up."""
    return _set(env, "PET_NNODES")


#: Built-ins detected by their variables alone: the adapter's module is imported only when
#: it is chosen, so a plain local launch pays nothing for schedulers it is not under.
ENV_DETECTORS: Dict[str, Callable[[Mapping[str, str]], bool]] = {
    "slurm": slurm_job,
    "mpi": mpi_process,
    "pbs": pbs_job,
    "lsf": lsf_job,
    "kubeflow": kubeflow_pod,
}

#: What ``--adapter auto`` tries, in order, before plug-ins and ``local``.
DETECTION_ORDER = ("slurm", "pbs", "lsf", "mpi", "kubeflow")

#: The built-in choices of ``--adapter``; :func:`adapter_names` adds the plug-ins.
ADAPTER_NAMES = ("auto",) + tuple(ADAPTERS)


def adapter_names() -> Tuple[str, ...]:
    """Every ``--adapter`` choice: auto, the built-ins, then installed plug-ins by name."""
    from hpclaunch.adapters import plugins

    return ADAPTER_NAMES + tuple(sorted(n for n in plugins.scan() if n not in ADAPTERS))


def _load_builtin(name: str) -> Adapter:
    module_name, class_name = ADAPTERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"adapter {name!r} is not available in this installation ({exc})"
        ) from None
    adapter: Adapter = getattr(module, class_name)()
    return adapter


def load(name: str) -> Adapter:
    """The adapter called ``name``: a built-in, else an installed plug-in."""
    if name in ADAPTERS:
        return _load_builtin(name)
    from hpclaunch.adapters import plugins

    found = plugins.scan()
    if name not in found:
        raise UsageError(f"unknown adapter {name!r}: use one of {', '.join(adapter_names())}")
    return plugins.load_plugin(found[name])


def worker_environment(name: str, env: Mapping[str, str]) -> Dict[str, str]:
    """What workers inherit from ``env`` when the world came from adapter ``name`` (a World
    built by hand, ``"api"``, gets the default filter)."""
    adapter: Adapter = BaseAdapter() if name == "api" else load(name)
    return adapter.worker_environment(env)


def _detecting_plugin(env: Mapping[str, str]) -> Optional[Adapter]:
    from hpclaunch.adapters import plugins

    for name, entry in sorted(plugins.scan().items()):
        if name in ADAPTERS:
            raise plugins.PluginError(
                f"{entry.describe()} takes the name of a built-in adapter: rename its entry "
                "point or uninstall that package"
            )
        adapter = plugins.load_plugin(entry)
        if adapter.detect(env):
            return adapter
    return None


def select(env: Mapping[str, str], options: WorldOptions, forced: Optional[str] = None) -> Adapter:
    """The adapter named by ``--adapter`` (``forced``, else ``options.adapter``), or the first
    that detects (see the order above)."""
    forced = forced or options.adapter
    if forced and forced != "auto":
        return load(forced)
    if options.world_info is not None:
        return load("explicit")
    for name in DETECTION_ORDER:
        if ENV_DETECTORS[name](env):
            return load(name)
    return _detecting_plugin(env) or load("local")


__all__ = [
    "ADAPTERS",
    "ADAPTER_NAMES",
    "DETECTION_ORDER",
    "ENV_DETECTORS",
    "mpi_process",
    "slurm_job",
    "Adapter",
    "BaseAdapter",
    "WorldOptions",
    "adapter_names",
    "load",
    "select",
    "worker_environment",
]
