"""Test worker: initialise MPI itself and report the world it got, as one JSON line per rank.

Run by hpclaunch under mpirun, it must get a world of its own (a singleton: size 1), never
the launcher's MPI rank. ``--strip`` first re-executes itself without the launcher's MPI
identity variables, as the spawner is asked to do, to check that the rest holds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hpclaunch.adapters.mpi import is_mpi_identity_var


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--strip", action="store_true")
    args = parser.parse_args()
    inherited = sorted(name for name in os.environ if is_mpi_identity_var(name))
    if args.strip and inherited:
        env = {k: v for k, v in os.environ.items() if not is_mpi_identity_var(k)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    record = {
        "rank": int(os.environ["RANK"]),
        "identity_vars": inherited,
        "fds_before_mpi": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    }
    # With the launcher's identity, MPI_Init would act as the launcher's rank (under
    # OpenMPI it hangs, waiting for a fence the real rank never joins): report, don't try.
    if not inherited:
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
