"""Test worker: report the MPI variables it really got, and what MPI_Init gives it.

Run by hpclaunch under mpirun. It writes one JSON record per rank: the names of every
variable of the MPI families in its own environment and in its launcher's (its parent's
/proc/<ppid>/environ, the positive control: the launcher *was* an MPI rank), and, when it
carries no rank identity (by the independent list in ``IDENTITY_*`` below), the world its
own MPI_Init gives it: a singleton of size 1, never the launcher's rank.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, Iterable, List

#: Families whose variables the worker reports (tunables and identity alike).
FAMILIES = ("OMPI_", "PMIX_", "PMI_", "MPI_LOCAL", "PRTE_", "HYDRA_", "HYDI_")

#: Per-rank identity, from the MPI implementations' own documentation (not from hpclaunch):
#: OpenMPI 5 "Environment variables set for MPI applications" (OMPI_COMM_WORLD_*,
#: OMPI_UNIVERSE_SIZE) and PMIx's server variables (PMIX_RANK, PMIX_NAMESPACE,
#: PMIX_SERVER_URI*, ...); MPICH Hydra's PMI wire-up (PMI_RANK, PMI_SIZE, PMI_FD, PMI_PORT,
#: PMI_ID) and its local-rank hints (MPI_LOCALNRANKS, MPI_LOCALRANKID).
IDENTITY_PREFIXES = ("OMPI_COMM_WORLD_", "PMIX_", "PMI_")
IDENTITY_NAMES = ("OMPI_UNIVERSE_SIZE", "MPI_LOCALNRANKS", "MPI_LOCALRANKID")
#: PMIx documents PMIX_MCA_* as user tunables: they may pass.
TUNABLE_PREFIXES = ("PMIX_MCA_",)


def is_identity(name: str) -> bool:
    if name.startswith(TUNABLE_PREFIXES):
        return False
    return name in IDENTITY_NAMES or name.startswith(IDENTITY_PREFIXES)


def family_names(names: Iterable[str]) -> List[str]:
    return sorted(name for name in names if name.startswith(FAMILIES))


def parent_environment() -> Dict[str, str]:
    with open(f"/proc/{os.getppid()}/environ", "rb") as handle:
        pairs = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    return {key.decode(): value.decode(errors="replace") for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    own = family_names(os.environ)
    record: Dict[str, object] = {
        "rank": int(os.environ["RANK"]),
        "worker_vars": own,
        "launcher_vars": family_names(parent_environment()),
        "fds_before_mpi": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    }
    # With a rank's identity, MPI_Init would act as that rank (under OpenMPI it hangs,
    # waiting for a fence the real rank never joins): report, don't try.
    if not any(is_identity(name) for name in own):
        from mpi4py import MPI

        record["mpi_size"] = MPI.COMM_WORLD.Get_size()
        record["mpi_rank"] = MPI.COMM_WORLD.Get_rank()
        MPI.Finalize()
    path = os.path.join(args.out, f"rank{record['rank']}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
