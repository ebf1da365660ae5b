"""Ending the job on every node through the scheduler that started the launchers.

Under Slurm each node's launcher is one task of a job step, and Slurm's default
(``KillOnBadExit=0``) lets the step's other tasks run on when one of them fails: the other
nodes' ranks then wait inside NCCL for its collective timeout, or until the wall clock ends
the job, holding every GPU of the allocation. So the launcher whose worker failed, once its
own teardown has begun, asks Slurm to end the step: ``scancel --signal=TERM <job>.<step>``
reaches every node's launcher, which tears its workers down as it does for any SIGTERM,
with its own ``--kill_timeout`` grace. Slurm is the only channel between nodes: there is no
control plane of hpclaunch's own to fail, to secure or to configure.

Why ``--signal=TERM`` and not a plain ``scancel <job>.<step>``: both reach the other
launchers as fast (benchmarks/slurm.py), but a plain scancel SIGKILLs every task ``KillWait``
seconds later (30 by default) whatever ``--kill_timeout`` says, and srun then reports the
step aborted; with the signal alone each launcher keeps its own grace and its own exit
status. (Either way slurmstepd prints its ``*** STEP ... CANCELLED ***`` line.)

The request reaches this node's launcher too (it is one of the step's tasks): that SIGTERM
is expected, and is not taken for a user's second Ctrl-C (:meth:`StepEnd.is_echo`). The
``scancel`` runs as a child in its own session, so the step's signal to this task's process
group does not cut it short; the event loop waits for it (see
:attr:`~hpclaunch.spawner.loop.TreeSupervisor.own`) but never signals it as a leftover.

A launcher ended this way cannot tell which rank on which node failed (nothing but the
signal arrives), so it says that the scheduler ended the step; the failing node's own
failure summary is the root cause, and its ``scheduler_end`` event (``action="requested"``,
``failed_rank``) is what joins the two in the job's record.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Mapping, Optional

from hpclaunch.fast import which
from hpclaunch.model.world import World
from hpclaunch.options import LaunchOptions
from hpclaunch.reporter import Reporter
from hpclaunch.spawner.events import Events

#: The signal the step's tasks get: every launcher tears down on it with its grace.
END_SIGNAL = signal.SIGTERM
#: What a task sees when ``srun --kill-on-bad-exit=1`` was asked for through the environment
#: (the flag itself is not visible to the tasks): srun then ends the step on a bad exit.
KILL_ON_BAD_EXIT_VAR = "SLURM_KILL_BAD_EXIT"
#: The most of scancel's output quoted in a warning.
MAX_QUOTED = 500
#: How long after scancel returns this launcher still waits for its own SIGTERM (Slurm
#: signals the step's tasks while, or just after, it answers scancel; tens of ms here).
ECHO_WAIT_S = 2.0


def step_end_for(
    world: World, launch: LaunchOptions, reporter: Reporter, events: Events
) -> Optional[StepEnd]:
    """This launcher's way to end its whole job, or None where there is nothing to end.

    Only a Slurm job step of several nodes has one: a one-node step has no other node, and
    an sbatch shell outside srun (run id ``<job>.batch``) is not a step of its own.
    """
    step = slurm_step(world)
    return StepEnd(step, launch.scheduler_end, reporter, events) if step is not None else None


def slurm_step(world: World) -> Optional[str]:
    """``<job>.<step>`` of the multi-node Slurm step this launcher is a task of, else None
    (a one-node step has no other node; an sbatch shell, ``<job>.batch``, is no step)."""
    if world.source != "slurm" or world.num_nodes < 2:
        return None
    job, _, step = world.run_id.partition(".")
    return world.run_id if job.isdigit() and step.isdigit() else None


class StepEnd:
    """Ends one Slurm job step on every node, at most once, and says so."""

    def __init__(self, step: str, enabled: bool, reporter: Reporter, events: Events) -> None:
        #: ``<job>.<step>``, as scancel takes it.
        self.step = step
        #: False with ``--no_scheduler_end``: a failure here leaves the other nodes running.
        self.enabled = enabled
        self.reporter = reporter
        self.events = events
        #: The running scancel's PID, the read end of its output pipe and when it started.
        self.pid = 0
        self.output_fd = -1
        self.started = 0.0
        #: Whether this launcher still expects the SIGTERM its own request sends it, and
        #: until when it waits for it once scancel has returned.
        self.expecting_echo = False
        self.echo_deadline: Optional[float] = None
        self.requested = False

    # ------------------------------------------------------------------ the failing node

    def request(
        self, failed_rank: Optional[int], env: Optional[Mapping[str, str]] = None
    ) -> Optional[int]:
        """A worker here failed for good: ask Slurm to end the step; the scancel's PID.

        None when nothing was started: already asked, turned off, srun ends the step by
        itself, or no scancel here (then a warning says what is left running).
        """
        if self.requested:
            return None
        self.requested = True
        source = os.environ if env is None else env
        if not self.enabled:
            self.reporter.debug(
                f"--no_scheduler_end: the other nodes of step {self.step} are left running"
            )
            return None
        if source.get(KILL_ON_BAD_EXIT_VAR, "").strip() == "1":
            self.reporter.debug(
                f"{KILL_ON_BAD_EXIT_VAR}=1: srun ends step {self.step} when this task exits"
            )
            return None
        scancel = which("scancel")
        if scancel is None:
            self.reporter.warning(
                f"scancel is not on PATH: the other nodes of step {self.step} run on until "
                "their workers end (srun --kill-on-bad-exit=1 would end them)"
            )
            return None
        argv = [scancel, f"--signal={signal.Signals(END_SIGNAL).name[3:]}", self.step]
        try:
            self.pid, self.output_fd = _spawn(argv, source)
        except OSError as exc:
            self.reporter.warning(
                f"cannot run scancel ({exc.strerror or exc}): the other nodes of step "
                f"{self.step} run on until their workers end"
            )
            return None
        self.started = time.monotonic()
        self.expecting_echo = True
        who = f"rank {failed_rank} failed" if failed_rank is not None else "the job failed here"
        self.reporter.info(
            f"{who}: asking Slurm to end step {self.step} on every node "
            f"({os.path.basename(scancel)} {' '.join(argv[1:])})"
        )
        self.events.emit("scheduler_end", action="requested", step=self.step,
                         failed_rank=failed_rank)
        return self.pid

    def finished(self, status: Optional[int]) -> None:
        """The scancel exited with wait status ``status`` (None: abandoned, still running)."""
        output = _read_all(self.output_fd)
        os.close(self.output_fd)
        self.output_fd = -1
        seconds = time.monotonic() - self.started
        self.echo_deadline = time.monotonic() + ECHO_WAIT_S
        if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            self.reporter.debug(f"scancel of step {self.step} done in {seconds * 1000:.0f} ms")
            return
        if status is None:
            self.expecting_echo = False  # cut short: nothing may be coming
            how = f"did not finish in {seconds:.0f} s (killed)"
        elif os.WIFEXITED(status):
            how = f"failed (exit {os.WEXITSTATUS(status)})"
        else:
            how = f"was killed by signal {os.WTERMSIG(status)}"
        # Slurm fails a step's signal as a whole ("Invalid job id specified") when one of its
        # nodes has already finished, yet signals the nodes still running: quote, don't guess.
        said = " ".join(output.split())[:MAX_QUOTED]
        self.reporter.warning(f"scancel of step {self.step} {how}{': ' + said if said else ''}")

    def echo_wait(self) -> Optional[float]:
        """Seconds left to wait for our own SIGTERM once scancel has returned; None when it
        came, is not expected, or the wait is over."""
        if not self.expecting_echo or self.echo_deadline is None:
            return None
        left = self.echo_deadline - time.monotonic()
        return left if left > 0 else None

    def is_echo(self, sig: int) -> bool:
        """True, once, for the SIGTERM this launcher's own request sends to its own task."""
        if self.expecting_echo and sig == END_SIGNAL:
            self.expecting_echo = False
            self.reporter.debug(f"got {signal.Signals(sig).name} from the end of step {self.step}")
            return True
        return False

    # ------------------------------------------------------------------ every other node

    def ended(self, sig: int) -> str:
        """Why a fatal signal came, for the launcher's "got SIGTERM" line ('' if unknown).

        Under Slurm a SIGTERM to a task is the step's end: ``scancel`` (a person's, or a
        failing node's launcher's), the time limit, or ``srun --kill-on-bad-exit``.
        """
        if sig != END_SIGNAL:
            return ""
        self.events.emit("scheduler_end", action="ended", step=self.step, failed_rank=None)
        return (
            f" (Slurm is ending step {self.step} on every node: scancel, the time limit, or "
            "a failed worker on another node)"
        )


def _spawn(argv: list[str], env: Mapping[str, str]) -> tuple[int, int]:
    """Start ``argv`` in its own session, stdout+stderr to a pipe; (pid, the pipe's read end).

    ``posix_spawn`` (no fork of the launcher, whose workers are being torn down meanwhile);
    SIGPIPE and SIGXFSZ, which Python ignores, get their defaults back.
    """
    read_fd, write_fd = os.pipe()
    try:
        stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = os.posix_spawn(
                argv[0],
                argv,
                dict(env),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, stdin, 0),
                    (os.POSIX_SPAWN_DUP2, write_fd, 1),
                    (os.POSIX_SPAWN_DUP2, write_fd, 2),
                ],
                setsid=True,
                setsigmask=(),
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        finally:
            os.close(stdin)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    return pid, read_fd


def _read_all(fd: int) -> str:
    """What is waiting in the pipe (the child has exited, so nothing more is coming)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


__all__ = ["StepEnd", "step_end_for"]
