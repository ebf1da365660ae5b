"""A failure, a scancel, a start and an elastic restart on a real Slurm cluster: hpclaunch
against torchrun, started the same way (one task per node under plain ``srun``).

    python benchmarks/slurm.py [--reps 3] [--launchers hpclaunch,torchrun] [--no-mpi]

A separate benchmark (not part of ``run.py``): it needs root and Slurm's daemons (the
Debian packages ``slurmctld slurmd slurm-client munge``, scripts/install-slurm.sh), and
starts the test suite's own cluster (``tests/slurm/cluster.py``: munge, slurmctld and one
``slurmd`` per node on this machine, ``ProctrackType=proctrack/pgid``, ``KillWait=3``),
4 nodes, stopped and removed at the end. Rows (medians, min-max, of ``--reps`` interleaved
repetitions):

* **a rank fails on one node -> no worker alive on any node**: ``srun -N4
  --ntasks-per-node=1``, 2 workers per node (``benchmarks/worker.py``); rank 5 (node 2)
  writes its CLOCK_MONOTONIC death time and exits 3; the value is from that time to the
  moment the last of the other 7 workers has exited (one pidfd each: the kernel's exit
  event, no polling). torchrun twice: under plain srun (its other nodes run on: "never",
  with the workers still alive ``NEVER_S`` seconds later) and under ``srun
  --kill-on-bad-exit=1``, the one way its job ends. hpclaunch also with ``--kill-on-bad-exit``
  (both ends at once), and the end-of-step request alone, ``scancel --signal=TERM`` against
  a plain ``scancel`` of the step: from the failure to the other launchers' SIGTERM is the
  same request either way (see hpclaunch/spawner/scheduler.py for the choice).
* **scancel of the step -> no worker alive**: the same 8 workers; from just before
  ``scancel <job>.<step>`` to the last worker's exit; "survivors" are the workers alive
  ``KillWait`` + 2 s later (under proctrack/pgid Slurm signals only each task's process
  group, and torchrun's workers have their own).
* **srun start -> all 8 workers running**: from just before ``srun`` to the last worker's
  announcement on the FIFO; floor: ``srun -N4 --ntasks-per-node=2`` of the worker itself.
* **elastic restart**: ``srun -N2``, 2 workers per agent (hpclaunch
  ``--enable_elastic_training``; torchrun with a c10d rendezvous), rank 3 fails in the first
  round, at a moment drawn at random in torch's one-second rendezvous period
  (:data:`RDZV_PERIOD_S`); from its death to the last worker of the next round announcing
  itself. ``--elastic-reps`` (default 20) repetitions: the spread is that period, so the
  verdict compares means with their standard errors.
* **MPI: a rank fails on one host -> no worker alive** (hpclaunch only; torchrun has no MPI
  mode): OpenMPI and MPICH over 3 emulated hosts (``benchmarks/emulate.py``), 2 workers per
  host, rank 3 (the middle host) fails.

Before each sample every node is idle again (polled with sinfo, untimed: right after a job a
node is "completing", and an srun then waits ~0.5 s for the next scheduling pass).
Synchronisation is on the FIFO the workers announce on, never on sleeps (the elastic row's
one sleep draws the failure's moment, after everything is known to run); only PIDs this
benchmark started or that announced themselves are ever signalled. Writes
``benchmarks/results/<date>-<host>-slurm.md`` and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import emulate  # noqa: E402
from benchmarks.procs import BenchError, Fifo, alive, kill_pids  # noqa: E402
from tests.slurm.cluster import KILL_WAIT, SlurmCluster, missing_programs  # noqa: E402

WORKER = str(ROOT / "benchmarks" / "worker.py")
RESULTS = ROOT / "benchmarks" / "results"
NODES = 4
PER_NODE = 2
#: How long a job that should end is given before its workers count as left running.
NEVER_S = 5.0
#: A start, a restart: anything slower is an error, not a sample.
TIMEOUT_S = 120.0
#: torch's c10d rendezvous polls its shared state at most once a second (its state cache,
#: and the one-second sleep of a node waiting in a join): a restart's length depends on
#: where the failure falls in that period, so the elastic row draws the moment at random in
#: it. With a fixed moment (right after the workers announce) each launcher's own start-up
#: time sets the phase, and the row measures that phase instead of the launcher.
RDZV_PERIOD_S = 1.1
#: The issue's targets for the failure row: at most this, and below torchrun with
#: --kill-on-bad-exit.
FAILURE_TARGET_S = 1.0

Sample = Optional[float]  # seconds; None: never (the cell says what was left)


def scripts() -> Dict[str, Optional[str]]:
    """The console scripts next to this interpreter (no pyenv shim in between)."""
    found = {}
    for name in ("hpclaunch", "torchrun"):
        path = Path(sys.executable).parent / name
        found[name] = str(path) if os.access(path, os.X_OK) else None
    return found


# --------------------------------------------------------------------------- plumbing


def wait_exits(pids: Sequence[int], timeout: float) -> Tuple[Optional[int], List[int]]:
    """(monotonic ns when the last of ``pids`` exited, or None; those still alive then).

    One pidfd per process: a pidfd turns readable when its process exits, whoever its
    parent is, so the time is the kernel's event, not a poll.
    """
    fds: Dict[int, int] = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    last = time.monotonic_ns()
    deadline = time.monotonic() + timeout
    try:
        waiting = list(fds)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, [fds[fd] for fd in waiting]
            ready, _, _ = select.select(waiting, [], [], remaining)
            last = time.monotonic_ns()
            waiting = [fd for fd in waiting if fd not in ready]
        return last, []
    finally:
        for fd in fds:
            os.close(fd)


class Run:
    """One ``srun`` (or ``mpirun``) of a job whose workers announce on ``fifo``."""

    def __init__(self, argv: Sequence[str], env: Dict[str, str], workdir: Path,
                 fifo: Fifo) -> None:
        self.fifo = fifo
        self.log = workdir / "run.log"
        with open(self.log, "wb") as log:
            self.started = time.monotonic_ns()
            self.process = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, cwd=ROOT)
        self.workers: Dict[int, int] = {}  # rank -> pid
        self.pids: List[int] = []  # every worker ever announced
        self.step = ""

    def announced(self, count: int) -> int:
        """Wait for ``count`` more worker lines; the monotonic ns the last one arrived."""
        seen = 0
        while seen < count:
            for line in self.fifo.expect(1, TIMEOUT_S):
                kind, rank, pid = line.split()[:3]
                if kind == "worker":
                    self.workers[int(rank)] = int(pid)
                    self.pids.append(int(pid))
                    seen += 1
        return time.monotonic_ns()

    def death_of(self, rank: int) -> int:
        """Release ``rank`` (it fails on SIGUSR1); its own CLOCK_MONOTONIC death time."""
        os.kill(self.workers[rank], signal.SIGUSR1)
        while True:
            for line in self.fifo.expect(1, TIMEOUT_S):
                words = line.split()
                if words[0] == "dead" and int(words[1]) == rank:
                    return int(words[2])

    def job_step(self) -> str:
        """``<job>.<step>`` of the first worker (from its environment)."""
        if not self.step:
            pid = next(iter(self.workers.values()))
            with open(f"/proc/{pid}/environ", "rb") as handle:
                env = dict(
                    item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item
                )
            self.step = f"{env[b'SLURM_JOB_ID'].decode()}.{env[b'SLURM_STEP_ID'].decode()}"
        return self.step

    def close(self, cluster: Optional[SlurmCluster]) -> None:
        if self.process.poll() is None and cluster is not None and self.step:
            cluster.run(["scancel", self.step.split(".")[0]])
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        kill_pids(alive(self.pids))

    def tail(self) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-4:])


def wait_idle(cluster: SlurmCluster, timeout: float = 30.0) -> None:
    """Until every node is idle again. A job's nodes stay "completing" for a moment after it
    ends, and an srun started then waits for the next scheduling pass (~0.5 s here): that
    would be measured as start-up. Only Slurm knows the state, so it is polled (untimed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = cluster.run(["sinfo", "-h", "-N", "-o", "%t"])
        states = listed.stdout.split()
        if listed.returncode == 0 and states and all(state == "idle" for state in states):
            return
        time.sleep(0.05)
    raise BenchError(f"the cluster's nodes are not idle after {timeout:g} s")


def new_fifo(workdir: Path) -> Fifo:
    return Fifo(workdir / "ready.fifo")


# --------------------------------------------------------------------------- commands


class Commands:
    """The srun command lines of each launcher, on one cluster."""

    def __init__(self, cluster: SlurmCluster, found: Dict[str, Optional[str]]) -> None:
        self.cluster = cluster
        self.found = found
        self.master = cluster.nodes[0]

    def static(self, name: str, nodes: int, worker: Sequence[str]) -> List[str]:
        if name == "hpclaunch":
            return [str(self.found["hpclaunch"]), "--nproc_per_node", str(PER_NODE), WORKER,
                    *worker]
        port = str(free_port())
        # torchrun's own static rendezvous; the node rank comes from Slurm.
        script = ('exec "$0" --nnodes "$SLURM_NNODES" --nproc_per_node "$1" '
                  '--node_rank "$SLURM_NODEID" --master_addr "$2" --master_port "$3" '
                  '"${@:4}"')
        return ["bash", "-c", script, str(self.found["torchrun"]), str(PER_NODE),
                self.master, port, WORKER, *worker]

    def elastic(self, name: str, worker: Sequence[str]) -> List[str]:
        if name == "hpclaunch":
            return [str(self.found["hpclaunch"]), "--enable_elastic_training",
                    "--nproc_per_node", str(PER_NODE), "--max_restarts", "3", WORKER,
                    *worker]
        port = str(free_port())
        # is_host by node id: every emulated node has this machine's hostname, so torchrun's
        # own guess (does the endpoint name this host?) would say no everywhere.
        script = ('exec "$0" --nnodes "$SLURM_NNODES" --nproc_per_node "$1" --max-restarts 3 '
                  '--rdzv_backend c10d --rdzv_endpoint "$2:$3" --rdzv_id "$SLURM_JOB_ID" '
                  '--rdzv_conf "is_host=$([ "$SLURM_NODEID" = 0 ] && echo 1 || echo 0)" '
                  '"${@:4}"')
        return ["bash", "-c", script, str(self.found["torchrun"]), str(PER_NODE),
                self.master, port, WORKER, *worker]

    def srun(self, nodes: int, *extra: str) -> List[str]:
        return ["srun", f"-N{nodes}", "--ntasks-per-node=1", *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- cases


class Result:
    """One sample: seconds (None: never), and what was left running."""

    def __init__(self, seconds: Sample, left: int = 0, note: str = "", waited: float = 0.0
                 ) -> None:
        self.seconds = seconds
        self.left = left
        self.note = note
        #: How long the case waited before it called the workers left running.
        self.waited = waited


def failure_case(cmds: Commands, name: str, srun_extra: Sequence[str], env: Dict[str, str],
                 workdir: Path) -> Result:
    """Rank 5 fails: from its death to no worker alive anywhere (or what is left)."""
    fifo = new_fifo(workdir)
    argv = [*cmds.srun(NODES, *srun_extra),
            *cmds.static(name, NODES, ["--ready", fifo.path, "--fail-rank", "5"])]
    run = Run(argv, cmds.cluster.client_env(env), workdir, fifo)
    try:
        run.announced(NODES * PER_NODE)
        run.job_step()
        others = [pid for rank, pid in run.workers.items() if rank != 5]
        died = run.death_of(5)
        ended, left = wait_exits(others, NEVER_S)
        if ended is None:
            return Result(None, len(left), waited=NEVER_S)
        return Result((ended - died) / 1e9)
    finally:
        run.close(cmds.cluster)
        fifo.close()


def request_case(cmds: Commands, plain: bool, env: Dict[str, str], workdir: Path) -> Result:
    """The end-of-step request alone, sent from here: from just before ``scancel
    [--signal=TERM] <step>`` to no worker of hpclaunch's 8 alive."""
    fifo = new_fifo(workdir)
    argv = [*cmds.srun(NODES), str(cmds.found["hpclaunch"]), "--nproc_per_node",
            str(PER_NODE), WORKER, "--ready", fifo.path]
    run = Run(argv, cmds.cluster.client_env(env), workdir, fifo)
    try:
        run.announced(NODES * PER_NODE)
        step = run.job_step()
        how = [] if plain else ["--signal=TERM"]
        start = time.monotonic_ns()
        subprocess.Popen(["scancel", *how, step], env=cmds.cluster.client_env(env))
        ended, left = wait_exits(list(run.workers.values()), NEVER_S)
        if ended is None:
            return Result(None, len(left), waited=NEVER_S)
        return Result((ended - start) / 1e9)
    finally:
        run.close(cmds.cluster)
        fifo.close()


def scancel_case(cmds: Commands, name: str, env: Dict[str, str], workdir: Path) -> Result:
    fifo = new_fifo(workdir)
    argv = [*cmds.srun(NODES), *cmds.static(name, NODES, ["--ready", fifo.path])]
    run = Run(argv, cmds.cluster.client_env(env), workdir, fifo)
    try:
        run.announced(NODES * PER_NODE)
        step = run.job_step()
        start = time.monotonic_ns()
        cmds.cluster.run(["scancel", step])
        ended, left = wait_exits(list(run.workers.values()), KILL_WAIT + 2)
        if ended is None:
            return Result(None, len(left), waited=KILL_WAIT + 2)
        return Result((ended - start) / 1e9)
    finally:
        run.close(cmds.cluster)
        fifo.close()


def start_case(cmds: Commands, name: str, env: Dict[str, str], workdir: Path) -> Result:
    fifo = new_fifo(workdir)
    if name == "srun":
        argv = ["srun", f"-N{NODES}", f"--ntasks-per-node={PER_NODE}", sys.executable, WORKER,
                "--ready", fifo.path]
    else:
        argv = [*cmds.srun(NODES), *cmds.static(name, NODES, ["--ready", fifo.path])]
    run = Run(argv, cmds.cluster.client_env(env), workdir, fifo)
    try:
        last = run.announced(NODES * PER_NODE)
        run.job_step()
        return Result((last - run.started) / 1e9)
    finally:
        run.close(cmds.cluster)
        fifo.close()


def elastic_case(cmds: Commands, name: str, env: Dict[str, str], workdir: Path,
                 phase: float) -> Result:
    """Rank 3 fails ``phase`` seconds after every worker runs: from its death to every
    worker of the next round running."""
    fifo = new_fifo(workdir)
    argv = [*cmds.srun(2), *cmds.elastic(name, ["--ready", fifo.path, "--fail-rank", "3"])]
    run = Run(argv, cmds.cluster.client_env(env), workdir, fifo)
    try:
        run.announced(2 * PER_NODE)
        run.job_step()
        time.sleep(phase)  # not a synchronisation: the failure's moment, drawn at random
        died = run.death_of(3)
        running = run.announced(2 * PER_NODE)  # every worker of the next round
        return Result((running - died) / 1e9)
    finally:
        run.close(cmds.cluster)
        fifo.close()


def mpi_failure_case(kind: str, env: Dict[str, str], workdir: Path) -> Result:
    fifo = new_fifo(workdir)
    with emulate.Hosts(3) as hosts:
        rank = [emulate.Hosts.python(kind), "-m", "hpclaunch", "--nproc_per_node",
                str(PER_NODE), "--kill_timeout", "600", WORKER, "--ready", fifo.path,
                "--fail-rank", "3"]
        run_env = hosts.env(dict(env, PYTHONPATH=str(ROOT)), kind)
        exported = [k for k in ("PYTHONPATH", "PYTHONPYCACHEPREFIX") if k in run_env]
        run = Run(hosts.command(kind, rank, exported), run_env, workdir, fifo)
        try:
            run.announced(3 * PER_NODE)
            others = [pid for r, pid in run.workers.items() if r != 3]
            died = run.death_of(3)
            ended, left = wait_exits(others, NEVER_S)
            if ended is None:
                return Result(None, len(left), waited=NEVER_S)
            return Result((ended - died) / 1e9)
        finally:
            run.close(None)
            fifo.close()


# --------------------------------------------------------------------------- the run


Case = Callable[[Path], Result]


def cases(cmds: Commands, env: Dict[str, str], names: Sequence[str],
          mpi: bool, seed: int) -> Dict[Tuple[str, str], Case]:
    """(row, column) -> one sample."""
    table: Dict[Tuple[str, str], Case] = {}
    phases = random.Random(seed)

    def add(row: str, column: str, case: Case) -> None:
        table[(row, column)] = case

    for name in names:
        add("fail", name, lambda d, n=name: failure_case(cmds, n, [], env, d))
        add("fail-K", name,
            lambda d, n=name: failure_case(cmds, n, ["--kill-on-bad-exit=1"], env, d))
        add("scancel", name, lambda d, n=name: scancel_case(cmds, n, env, d))
        add("start", name, lambda d, n=name: start_case(cmds, n, env, d))
        add("elastic", name,
            lambda d, n=name: elastic_case(cmds, n, env, d, phases.uniform(0, RDZV_PERIOD_S)))
    add("start", "srun", lambda d: start_case(cmds, "srun", env, d))
    if "hpclaunch" in names:
        add("request", "hpclaunch", lambda d: request_case(cmds, False, env, d))
        add("request-plain", "hpclaunch", lambda d: request_case(cmds, True, env, d))
        if mpi:
            for kind in (emulate.OPENMPI, emulate.MPICH):
                why = emulate.missing(kind)
                if why is None:
                    add(f"mpi-{kind}", "hpclaunch", lambda d, k=kind: mpi_failure_case(k, env, d))
    return table


ROWS = [
    ("fail", "a rank fails on one node → no worker alive on any node (plain srun)"),
    ("fail-K", "… same, `srun --kill-on-bad-exit=1`"),
    ("request", "… end-of-step request alone: `scancel --signal=TERM` → no worker alive"),
    ("request-plain", "… end-of-step request alone: plain `scancel` → no worker alive"),
    ("scancel", "`scancel` of the step → no worker alive"),
    ("start", "srun start → all 8 workers running (floor: srun of the worker)"),
    ("elastic", "elastic restart: a worker fails → every worker of the next round running "
                "(2 agents × 2 workers)"),
    (f"mpi-{emulate.OPENMPI}", "MPI (OpenMPI, 3 hosts): a rank fails → no worker alive"),
    (f"mpi-{emulate.MPICH}", "MPI (MPICH, 3 hosts): a rank fails → no worker alive"),
]
COLUMNS = ["hpclaunch", "torchrun", "srun"]


def cell(samples: List[Result]) -> str:
    if not samples:
        return "—"
    errors = [s.note for s in samples if s.note]
    values = [s.seconds for s in samples if s.seconds is not None and not s.note]
    nevers = [s for s in samples if s.seconds is None and not s.note]
    parts = []
    if values:
        median = statistics.median(values)
        parts.append(f"{fmt(median)} ({fmt(min(values))}–{fmt(max(values))})"
                     if len(values) > 1 else fmt(median))
    if nevers:
        left = max(s.left for s in nevers)
        parts.append(f"never ×{len(nevers)} ({left} workers alive after "
                     f"{nevers[0].waited:g} s)")
    if errors:
        parts.append(f"ERROR ×{len(errors)}: {errors[0][:80]}")
    return "; ".join(parts)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render(results: Dict[Tuple[str, str], List[Result]], reps: int, elastic_reps: int,
           elapsed: float) -> str:
    used = [c for c in COLUMNS if any(col == c for _, col in results)]
    lines = [
        f"# Slurm benchmark, {datetime.date.today().isoformat()} on {platform.node()}",
        "",
        f"`python benchmarks/slurm.py`: {reps} interleaved repetition(s) ({elastic_reps} of "
        f"the elastic row), {elapsed:.0f} s; "
        f"{NODES}-node test cluster (proctrack/pgid, KillWait={KILL_WAIT}), "
        f"{PER_NODE} workers per node; {os.cpu_count()} CPUs; load before "
        f"{os.getloadavg()[0]:.2f}. Medians (min–max).",
        "",
        "| | " + " | ".join(used) + " |",
        "|---|" + "---|" * len(used),
    ]
    for key, label in ROWS:
        if not any(row == key for row, _ in results):
            continue
        cells = [cell(results.get((key, c), [])) for c in used]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", verdict(results)]
    return "\n".join(lines) + "\n"


def median_of(results: Dict[Tuple[str, str], List[Result]], key: Tuple[str, str]
              ) -> Optional[float]:
    values = [s.seconds for s in results.get(key, []) if s.seconds is not None and not s.note]
    return statistics.median(values) if values else None


def mean_and_error(results: Dict[Tuple[str, str], List[Result]], key: Tuple[str, str]
                   ) -> Tuple[float, float]:
    """Mean and its standard error (0 with fewer than two samples)."""
    values = [s.seconds for s in results.get(key, []) if s.seconds is not None and not s.note]
    if len(values) < 2:
        return (values[0] if values else 0.0), 0.0
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5


def verdict(results: Dict[Tuple[str, str], List[Result]]) -> str:
    mine = median_of(results, ("fail", "hpclaunch"))
    peer = median_of(results, ("fail-K", "torchrun"))
    lines = ["Targets (issue 25):"]
    if mine is not None:
        met = mine <= FAILURE_TARGET_S and (peer is None or mine < peer)
        against = f", torchrun with --kill-on-bad-exit {fmt(peer)}" if peer is not None else ""
        lines.append(f"- failure on one node → no worker anywhere ≤ {FAILURE_TARGET_S:g} s and "
                     f"below torchrun's --kill-on-bad-exit: {'met' if met else 'MISSED'} "
                     f"({fmt(mine)}{against})")
    mine = median_of(results, ("elastic", "hpclaunch"))
    peer = median_of(results, ("elastic", "torchrun"))
    if mine is not None and peer is not None:
        means = {name: mean_and_error(results, ("elastic", name))
                 for name in ("hpclaunch", "torchrun")}
        (m1, e1), (m2, e2) = means["hpclaunch"], means["torchrun"]
        verdict = "met" if m1 + e1 < m2 - e2 else "MISSED" if m1 - e1 > m2 + e2 else "EVEN"
        lines.append(
            f"- elastic restart below torchrun: {verdict} (medians {fmt(mine)} vs {fmt(peer)}; "
            f"means {fmt(m1)} ± {fmt(e1)} vs {fmt(m2)} ± {fmt(e2)}, ± one standard error; "
            "EVEN: the means are within each other's error. The spread is torch's one-second "
            "rendezvous period, the same code in both)")
    return "\n".join(lines)


def bench_env() -> Dict[str, str]:
    """Like run.py: no scheduler variables of our own; bytecode cached for every launcher."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_", "HYDRA_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path.home() / ".cache" / "hpclaunch-bench" / "pycache")
    env["PYTHONPATH"] = str(ROOT)
    return env


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--elastic-reps", type=int, default=20,
                        help="repetitions of the elastic row (its spread is torch's 1 s period)")
    parser.add_argument("--launchers", default="hpclaunch,torchrun")
    parser.add_argument("--rows", default="", help="only these rows (comma-separated keys)")
    parser.add_argument("--no-mpi", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    missing = missing_programs()
    if missing or os.geteuid() != 0:
        print(f"skipped: needs root and Slurm ({', '.join(missing) or 'not root'})",
              file=sys.stderr)
        return 1
    found = scripts()
    names = [n for n in args.launchers.split(",") if n]
    for name in names:
        if found.get(name) is None:
            print(f"skipped {name}: no {name} beside {sys.executable}", file=sys.stderr)
    names = [n for n in names if found.get(n)]
    env = bench_env()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hpclaunch-slurm-bench-") as tmp:
        cluster = SlurmCluster(Path(tmp) / "cluster", nodes=NODES, prefix="hlbnode",
                               extra_env={"PYTHONPATH": str(ROOT)})
        cluster.start()
        try:
            table = cases(Commands(cluster, found), env, names, not args.no_mpi, args.seed)
            if args.rows:
                keep = set(args.rows.split(","))
                table = {k: v for k, v in table.items() if k[0] in keep}
            results = run_all(table, args.reps, args.elastic_reps, args.seed, Path(tmp),
                              cluster)
        finally:
            cluster.stop()
    text = render(results, args.reps, args.elastic_reps, time.monotonic() - began)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.date.today().isoformat()}-{platform.node()}-slurm.md"
    path.write_text(text)
    print(f"written: {path}", file=sys.stderr)
    return 0


def run_all(table: Dict[Tuple[str, str], Case], reps: int, elastic_reps: int, seed: int,
            tmp: Path, cluster: Optional[SlurmCluster] = None
            ) -> Dict[Tuple[str, str], List[Result]]:
    """Every case once per repetition, in a shuffled order (load drifts over all alike)."""
    shuffle = random.Random(seed)
    results: Dict[Tuple[str, str], List[Result]] = {key: [] for key in table}
    # Untimed, once per kind of start: bytecode is cached under PYTHONPYCACHEPREFIX on the
    # first run of each interpreter's imports (torch's included), as run.py's warm-up does.
    for key in sorted(k for k in table if k[0] in ("start", "elastic")):
        workdir = tmp / f"warm-{key[0]}-{key[1]}"
        workdir.mkdir()
        try:
            table[key](workdir)
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            print(f"warm-up {key[0]} {key[1]} failed: {exc}", file=sys.stderr)
    for rep in range(max(reps, elastic_reps)):
        order = [k for k in table if rep < (elastic_reps if k[0] == "elastic" else reps)]
        shuffle.shuffle(order)
        for index, key in enumerate(order):
            workdir = tmp / f"r{rep}-{index}"
            workdir.mkdir()
            try:
                if cluster is not None:
                    wait_idle(cluster)
                result = table[key](workdir)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                result = Result(None, note=f"{type(exc).__name__}: {exc}")
            results[key].append(result)
            shown = fmt(result.seconds) if result.seconds is not None else (
                result.note or f"never ({result.left} left)")
            print(f"[{rep + 1}] {key[0]} {key[1]}: {shown}", file=sys.stderr)
    return results


if __name__ == "__main__":
    sys.exit(main())
