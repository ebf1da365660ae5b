"""A real Slurm cluster on this one machine, for the tests: munge, slurmctld, N slurmd.

Everything lives under one directory (config, keys, state, spool, logs, fake GPU devices) and
every daemon runs in the foreground as a child of the test process, so stopping the cluster
means signalling exactly the PIDs started here, nothing found by name; :meth:`stop` also
removes the directory. Each ``slurmd -N <node>`` has its own port on 127.0.0.1. The node
names resolve (``127.0.1.1N hlnodeN``) so that a master address such as ``hlnode1`` is a real
name lookup, as on a cluster, but the machine's /etc/hosts is never edited: every daemon
runs in a private mount namespace where a hosts file of the cluster's own is bind-mounted
over /etc/hosts, and job steps inherit it from slurmd. Fake GPUs are GRES ``File=`` entries
pointing at char devices made with ``mknod c 1 3`` (copies of /dev/null): steps then get
real ``CUDA_VISIBLE_DEVICES``/``SLURM_STEP_GPUS`` from Slurm itself.

``ProctrackType=proctrack/pgid`` and ``TaskPlugin=task/none`` are used because cgroups are
not usable inside this container; that is also the setting under which a launcher must
forward signals to its own workers itself (Slurm signals only the task's process group).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Callable, Dict, List, Mapping, Optional, Sequence

REQUIRED_PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sbatch", "scontrol")
HOSTS_FILE = Path("/etc/hosts")
GPUS_PER_NODE = 2
#: Seconds between the TERM and the KILL of ``scancel`` and of the time limit.
KILL_WAIT = 3


def missing_programs() -> List[str]:
    return [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until true; only for state that nothing can signal (Slurm's)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def write_hosts_file(path: Path, nodes: Sequence[str]) -> None:
    """The machine's /etc/hosts plus a ``127.0.1.1N name`` line per node: the daemons' view."""
    lines = [f"127.0.1.{10 + index} {name}" for index, name in enumerate(nodes, 1)]
    path.write_text(HOSTS_FILE.read_text().rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def with_private_hosts(hosts_file: Path, argv: Sequence[str]) -> List[str]:
    """``argv`` in a private mount namespace whose /etc/hosts is ``hosts_file``.

    unshare and sh both exec, so the PID of the returned command is the PID of ``argv[0]``.
    """
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", 'mount -n --bind "$0" /etc/hosts && exec "$@"', str(hosts_file), *argv,
    ]


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop`; ``env`` is for every client call."""

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        prefix: str = "hlnode",
        extra_env: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.root = root
        self.extra_env = dict(extra_env or {})
        self.nodes = [f"{prefix}{i}" for i in range(1, nodes + 1)]
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.sock"
        self.hosts_file = root / "etc" / "hosts"
        self._procs: Dict[str, subprocess.Popen[bytes]] = {}
        self._logs: List[IO[bytes]] = []

    @property
    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(self.extra_env)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def client_env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        env = self.env
        env.update(extra or {})
        return env

    # -- set-up -----------------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in ("etc", "munge", "state", "spool", "log", "run", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        for node in self.nodes:
            for index in range(GPUS_PER_NODE):
                device = self.root / "dev" / f"{node}-gpu{index}"
                if not device.exists():
                    os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))
        host = socket.gethostname()
        ctld_port = free_port()
        lines = [
            "ClusterName=hpclaunchtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued batch job waits this long (default 120 s) to restart.
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool' / '%n'}",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/pgid",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/builtin",
            # A requeued job becomes eligible on a periodic pass only (default every 60 s).
            "SchedulerParameters=sched_interval=1",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "GresTypes=gpu",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            f"KillWait={KILL_WAIT}",
            # Derived master ports follow job ids: two test clusters running at once on this
            # machine must not both start at job 1.
            f"FirstJobId={random.randrange(1000, 10**6)}",
            "MinJobAge=600",
            "InactiveLimit=0",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        for node in self.nodes:
            lines.append(
                f"NodeName={node} NodeAddr=127.0.0.1 Port={free_port()} CPUs=8 "
                f"RealMemory=1000 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN"
            )
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        gres = [
            f"NodeName={node} Name=gpu File={self.root / 'dev'}/{node}-gpu[0-{GPUS_PER_NODE - 1}]"
            for node in self.nodes
        ]
        (self.root / "etc" / "gres.conf").write_text("AutoDetect=off\n" + "\n".join(gres) + "\n")

    def _spawn(self, name: str, argv: List[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # closed in stop()
        self._logs.append(log)
        self._procs[name] = subprocess.Popen(
            with_private_hosts(self.hosts_file, argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.root / 'log'}")

    def start(self, timeout: float = 30.0) -> None:
        self._write_config()
        write_hosts_file(self.hosts_file, self.nodes)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
        )
        wait_until(self._munge_ready, timeout, "munged")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(self.conf)])
        wait_until(self._all_idle, timeout, "every node to be idle")

    def _munge_ready(self) -> bool:
        self._check_alive()
        return self.munge_socket.exists()

    def _all_idle(self) -> bool:
        self._check_alive()
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=self.env
        )
        if result.returncode != 0:
            return False
        states = dict(line.split() for line in result.stdout.splitlines() if line.strip())
        return all(states.get(node) == "idle" for node in self.nodes)

    # -- use --------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 120,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[Path] = None,
    ) -> subprocess.CompletedProcess[str]:
        """A client command with this cluster's SLURM_CONF, output captured as text."""
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=self.client_env(env),
            timeout=timeout,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )

    def job_state(self, job_id: str) -> str:
        result = self.run(["squeue", "-h", "-j", job_id, "-o", "%T"])
        state = result.stdout.strip()
        if state:
            return state
        shown = self.run(["scontrol", "-o", "show", "job", job_id])
        for field in shown.stdout.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def wait_job_done(self, job_id: str, timeout: float = 120) -> str:
        ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
        wait_until(lambda: self.job_state(job_id) in ended, timeout, f"job {job_id} to end")
        return self.job_state(job_id)

    # -- tear-down --------------------------------------------------------------------------

    def cancel_all_jobs(self, timeout: float = 30.0) -> None:
        """Cancel this cluster's jobs (a failed test may leave one), so no step outlives slurmd."""
        listed = self.run(["squeue", "-h", "-o", "%A"], timeout=timeout)
        jobs = listed.stdout.split()
        if listed.returncode != 0 or not jobs:
            return
        self.run(["scancel", *jobs], timeout=timeout)
        try:
            wait_until(
                lambda: not self.run(["squeue", "-h", "-o", "%A"]).stdout.strip(),
                timeout,
                "the test cluster's jobs to end",
                interval=0.2,
            )
        except TimeoutError:
            pass  # stop() goes on: the daemons must not outlive the session either

    def stop(self, timeout: float = 20.0) -> None:
        """TERM exactly the daemons started here, newest first; KILL what outlives ``timeout``."""
        if self._procs.get("slurmctld") is not None and self._procs["slurmctld"].poll() is None:
            self.cancel_all_jobs()
        for name in reversed(list(self._procs)):
            proc = self._procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
