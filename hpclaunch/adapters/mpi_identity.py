"""Which environment variables say "this process is an MPI rank", and which say *which* one.

Kept apart from the MPI adapter (and free of imports) because every launch needs the
second list: workers must not inherit the launcher's MPI identity, whatever the adapter.
"""

from __future__ import annotations

from typing import Tuple

#: Variables that only an MPI process manager sets for a process it started. Any one of them,
#: non-empty, means "this launcher is an MPI rank". (Slurm's ``srun --mpi=pmi2`` sets PMI_*
#: too; the Slurm adapter is tried first and describes such a step better.)
MPI_RANK_VARS: Tuple[str, ...] = (
    "OMPI_COMM_WORLD_SIZE",  # OpenMPI (all versions)
    "PMIX_RANK",  # any PMIx launcher: OpenMPI 5 / PRRTE, Slurm --mpi=pmix, ...
    "PMI_SIZE",  # MPICH Hydra, Intel MPI, MVAPICH, Cray PMI
    "PMI_RANK",
    "MPI_LOCALNRANKS",  # MPICH Hydra
    "MV2_COMM_WORLD_SIZE",  # MVAPICH2 mpirun_rsh
    "PALS_RANKID",  # HPE Cray PALS (mpiexec on EX systems)
    "ALPS_APP_PE",  # Cray ALPS (aprun)
)

#: Prefixes of the variables that tell a process *which* MPI process it is. A worker that
#: inherits them and calls MPI_Init would connect to the process manager as the launcher.
#: Tunables (``OMPI_MCA_*``, ``PMIX_MCA_*``, ``PRTE_MCA_*``, ``HYDRA_*``, ``I_MPI_*``) pass.
MPI_IDENTITY_PREFIXES: Tuple[str, ...] = (
    "OMPI_COMM_WORLD_",
    "PMIX_",
    "PMI_",
    "MPI_LOCALNRANKS",
    "MPI_LOCALRANKID",
    "MV2_COMM_WORLD_",
    "PALS_",
    "ALPS_APP_",
    "JSM_NAMESPACE_",  # IBM jsrun (LSF): Lightning's LSF environment reads the rank there
    "OMPI_MCA_ess_base_",  # OpenMPI <= 4: job id and vpid
    "OMPI_MCA_orte_",  # OpenMPI <= 4: daemon URIs, local rank data
)

#: Exact names from the same families that carry job identity rather than tuning.
MPI_IDENTITY_NAMES: Tuple[str, ...] = (
    "OMPI_UNIVERSE_SIZE",
    "OMPI_WORLD_SIZE",
    "OMPI_WORLD_LOCAL_SIZE",
    "OMPI_NUM_APP_CTX",
    "OMPI_FIRST_RANKS",
    "OMPI_APP_CTX_NUM_PROCS",
    "OMPI_FILE_LOCATION",
    "OMPI_COMMAND",
    "OMPI_ARGV",
    "OMPI_MCA_num_procs",
    "PRTE_LAUNCHED",
)

#: User-set tunables that share an identity prefix and must reach workers unchanged.
_TUNABLE_PREFIXES: Tuple[str, ...] = ("PMIX_MCA_",)


def is_mpi_identity_var(name: str) -> bool:
    """Whether ``name`` is part of an MPI launcher's per-process identity (drop it for workers)."""
    if name.startswith(_TUNABLE_PREFIXES):
        return False
    return name in MPI_IDENTITY_NAMES or name.startswith(MPI_IDENTITY_PREFIXES)
