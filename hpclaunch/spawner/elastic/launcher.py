"""Elastic mode: this node's workers under torch's elastic agent, through its public API only.

Three processes share the work:

* The **launcher** (:func:`run_elastic`) keeps every guarantee of static mode: signal
  handling through the wakeup fd, the subreaper, the watchdog, the PID file and the exit
  status. It never imports torch.
* One forked child, the **agent**, imports torch and calls
  ``torch.distributed.launcher.api.elastic_launch(LaunchConfig(...), python)`` with a c10d
  rendezvous at ``master_addr:master_port`` and the world's run id. Nothing private of torch
  is touched (DeepSpeed's elastic mode broke on torch 2.13 by subclassing the agent).
* Each **worker** starts as :mod:`hpclaunch.spawner.elastic.worker`, which arms pdeathsig,
  adds the contract's variables the agent does not set, opens the per-rank log and binds
  cores, then ``exec``s the user's command in place.

Why the agent is a child and not a call in the launcher: torch installs handlers that
*raise* ``SignalException`` from wherever the main thread is, and only once workers start,
so a signal during rendezvous would kill an in-process launcher with no cleanup; torch's
import (seconds) and its threads stay out of the process that must survive to clean up; and
the agent's exit tells the launcher that torch's own TERM -> KILL teardown has finished.
The agent runs in its own session, so a terminal's Ctrl-C (or Slurm's signal to the task's
process group) reaches the launcher only, which then asks the agent exactly once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import signal
import socket
import time
from typing import TYPE_CHECKING, AbstractSet, Any, Dict, List, Mapping, Optional, Tuple

from hpclaunch.errors import UsageError
from hpclaunch.model.elastic import ElasticSetup
from hpclaunch.model.plan import LaunchPlan
from hpclaunch.reporter import DEBUG, Reporter
from hpclaunch.spawner import logs, tree
from hpclaunch.spawner.elastic import watch
from hpclaunch.spawner.elastic.agent import (
    SHARED_STORE_KNOB,
    AgentRun,
    fork_agent,
    shutdown_timeout,
)
from hpclaunch.spawner.elastic.watch import WorkerWatch
from hpclaunch.spawner.events import Events
from hpclaunch.spawner.guard import launch_guard
from hpclaunch.spawner.hang import STALL_EXIT_STATUS, HangWatch, WatchFiles
from hpclaunch.spawner.inbox import FATAL_SIGNALS, SignalInbox
from hpclaunch.spawner.loop import TreeSupervisor
from hpclaunch.spawner.report import Outcome, WorkerFailure
from hpclaunch.spawner.scheduler import step_end_for
from hpclaunch.spawner.stacks import DumpTarget
from hpclaunch.spawner.usage import WorkerUsage

if TYPE_CHECKING:
    from resource import struct_rusage

#: Past ``--kill_timeout``, how long the agent may take to finish its own TERM -> KILL of
#: the workers and exit before the launcher kills everything itself.
AGENT_GRACE_SECONDS = 2.0


def require_torch() -> None:
    """Fail as a usage error (exit 2, nothing spawned) if torch is absent; imports nothing."""
    if importlib.util.find_spec("torch") is None:
        raise UsageError(
            "--enable_elastic_training needs torch in this Python: pip install torch "
            "(or run without elastic mode)"
        )




# --------------------------------------------------------------------------- the launcher


class _ElasticSupervisor(TreeSupervisor):
    """The launcher's loop over one child (the agent) and any orphans it adopts."""

    def __init__(
        self,
        plan: LaunchPlan,
        setup: ElasticSetup,
        reporter: Reporter,
        inbox: SignalInbox,
        agent: int,
        result_fd: int,
        helpers: AbstractSet[int],
        events: Events,
        files: WatchFiles,
        hellos: Optional[socket.socket] = None,
    ) -> None:
        super().__init__(inbox, plan.launch.kill_timeout, reporter, helpers, events)
        self.plan = plan
        self.setup = setup
        self.agent = agent
        self.result_fd = result_fd
        self.agent_status: Optional[int] = None
        self.result: Dict[str, Any] = {}
        self.buffer = b""
        self.step_end = step_end_for(plan.world, plan.launch, reporter, events)
        self.selector.register(result_fd, selectors.EVENT_READ, self.on_result_readable)
        self.node = (plan.world.node_rank, plan.host)
        self.watch = WorkerWatch(self, hellos, agent) if hellos is not None else None
        #: SIGQUIT's dumps and --stall_timeout (by heartbeat files only: output is not relayed)
        self.hang = HangWatch(plan, files, self.selector, reporter, events, self.dump_targets,
                              {}, self.adopt_helper)

    def ends_by_pid(self) -> List[Tuple[int, WorkerUsage]]:
        return self.watch.ends if self.watch is not None else []

    def close(self) -> None:
        self.hang.close()
        if self.watch is not None:
            self.watch.close()
        super().close()

    def on_dump_request(self) -> None:
        self.hang.on_sigquit()

    def dump_targets(self) -> List[DumpTarget]:
        """The agent's workers, by the local rank and rank their environment says."""
        targets = []
        for pid in self.workers():
            ranks = _rank_variables(pid)
            if ranks is not None and ranks[1] < len(self.plan.workers):
                rank, local_rank = ranks
                targets.append(DumpTarget(local_rank, rank, pid,
                                          log_path=self.plan.log_path_for(rank)))
        return targets

    def wake_timeout(self) -> Optional[float]:
        return self.hang.wake_timeout(self.phase == self.RUNNING)

    def on_wake(self) -> None:
        running = self.phase == self.RUNNING
        if self.hang.on_wake(running, False) and running:
            self.note_teardown("stall")
            self.begin_terminate()  # the stall is reported and its stacks are out

    # ------------------------------------------------------------------ loop hooks

    def forward(self, sig: int) -> int:
        workers = self.workers()
        for pid in workers:
            tree.send(pid, sig)
        self.note_sent(sig, "worker(s)", workers)
        self.reporter.info(f"forwarded {signal.Signals(sig).name} to {len(workers)} worker(s)")
        return len(workers)

    def worker_count(self) -> int:
        return len(self.workers())

    def on_fatal(self, sig: int) -> None:
        self.fatal_signal = sig
        self.reporter.info(
            f"got {signal.Signals(sig).name}{self.ended_by(sig)}: stopping the elastic agent "
            "and its workers"
        )

    def after_signals(self) -> None:
        self.read_result()
        self.reap()

    def on_child_exit(
        self, pid: int, status: int, usage: Optional[struct_rusage] = None
    ) -> None:
        if pid == self.agent:
            self.agent_status = status
            self.on_agent_exit()

    def on_result_readable(self, fd: int) -> None:
        self.read_result()
        # EOF (agent gone) or a result: nothing more to wait for on it.
        self.selector.unregister(fd)

    def finished(self) -> bool:
        return self.agent_status is not None and self.no_children

    def workers(self) -> List[int]:
        """The agent's direct children: the workers (each started by elastic/worker.py)."""
        import psutil

        try:
            return [p.pid for p in psutil.Process(self.agent).children(recursive=False)]
        except psutil.NoSuchProcess:
            return []

    def read_result(self) -> None:
        while True:
            try:
                chunk = os.read(self.result_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buffer += chunk
        if b"\n" in self.buffer and not self.result:  # one whole line, however it arrived
            line = self.buffer.split(b"\n", 1)[0]
            try:
                self.result = json.loads(line)
            except ValueError:
                self.result = {"kind": "error", "message": line.decode(errors="replace")}
            self.on_result()

    def on_result(self) -> None:
        """The agent gave up (restarts used up, or the rendezvous cannot go on): the other
        nodes cannot go on without this one, so the job ends on every node."""
        kind = self.result.get("kind")
        if kind in ("failed", "error") and self.fatal_signal is None:
            rank = self.result.get("rank")
            self.end_step(int(rank) if kind == "failed" and rank is not None else None)

    def on_agent_exit(self) -> None:
        """The agent is gone, so are its workers; what they left behind (we adopted it) goes."""
        self.read_result()
        left = self.descendants()
        if not left or self.phase == self.KILLING:
            return
        if self.phase == self.RUNNING:
            self.note_teardown("leftovers")
            self.leftovers = len(left)
            self.reporter.warning(
                f"the elastic agent is done but {len(left)} process(es) the workers started "
                "are still running: stopping them"
            )
            self.start_clock()
        for pid in left:
            tree.send(pid, signal.SIGTERM)
        self.note_sent(signal.SIGTERM, "process(es) the agent's workers left", left)

    def begin_terminate(self) -> None:
        """SIGTERM to the agent, which stops its workers (TERM, --kill_timeout, KILL).

        The workers are not signalled directly: the agent must see the signal before it sees
        a dead worker, or it would count a failure and start a new attempt.
        """
        if self.agent_status is None:
            idle = not self.workers()
            self.start_clock(extra=AGENT_GRACE_SECONDS)
            if idle:  # no worker to stop, only the agent's own wait (rendezvous, exit barrier,
                # which torch waits in C++ and no signal interrupts): no --kill_timeout grace
                self.deadline = time.monotonic() + AGENT_GRACE_SECONDS
            tree.send(self.agent, signal.SIGTERM)
            self.note_sent(signal.SIGTERM, "elastic agent", [self.agent])
        else:
            self.start_clock()
            self.terminate_descendants()

    # ------------------------------------------------------------------ result

    def explain(self) -> str:
        """The agent's error, with what to do about the usual rendezvous ones."""
        kind = str(self.result.get("type", ""))
        message = str(self.result.get("message", ""))
        endpoint, lo = self.setup.endpoint, self.setup.min_nodes
        hints = {
            "RendezvousTimeoutError": (
                f"the rendezvous at {endpoint} did not gather {lo} node(s) in time: start "
                "every node's hpclaunch with the same --master_addr and --master_port, lower "
                "--min_elastic_nodes, or raise join_timeout in --rdzv_conf"
            ),
            "RendezvousConnectionError": (
                f"cannot reach or host the rendezvous store at {endpoint} (node 0 hosts it): "
                "check --master_addr/--master_port and that node 0's hpclaunch runs"
            ),
            "RendezvousClosedError": (
                f"the rendezvous at {endpoint} is closed: the job already ended on another "
                "node, or another node's workers had finished, so no new round can form"
            ),
        }
        text = f"{kind}: {message}" if kind and message else kind or message
        return f"{text} ({hints[kind]})" if kind in hints else text

    def outcome(self) -> Outcome:
        """As static mode's; a failure that is not a worker's is explained in ``error``."""
        if self.hang.stalled is not None:
            return Outcome(exit_code=STALL_EXIT_STATUS, error=self.hang.outcome_error())
        if self.fatal_signal is not None:
            return Outcome(exit_code=128 + self.fatal_signal, fatal_signal=self.fatal_signal)
        kind = self.result.get("kind")
        if kind == "ok":
            return Outcome(exit_code=0, leftovers_killed=self.leftovers)
        if kind == "failed":
            code = int(self.result["exitcode"])
            rank = int(self.result["rank"])
            restarts = self.setup.max_restarts
            log_path = self.plan.log_path_for(rank)
            if log_path is not None and os.path.islink(log_path):
                log_path = None  # planted by someone else: the worker refused it, so do we
            failure = WorkerFailure(
                rank=rank,
                local_rank=int(self.result["local_rank"]),
                host=self.plan.host,
                pid=int(self.result["pid"]),
                exit_code=code if code >= 0 else None,
                signal=-code if code < 0 else None,
                log_path=log_path,
                detail=(
                    f"the elastic job gave up after {restarts} restart(s) of the worker group "
                    "(--max_restarts)"
                ),
            )
            seen = [end for pid, end in self.ends_by_pid() if pid == failure.pid]
            if seen:  # what the launcher saw of that worker's exit (elastic/watch.py)
                failure = failure._replace(cpu_seconds=seen[-1].cpu_seconds,
                                           oom_killed=seen[-1].oom_killed)
            return Outcome(exit_code=failure.status, failure=failure)
        if kind == "signal":
            sig = int(self.result["signal"])
            return Outcome(
                exit_code=128 + sig,
                fatal_signal=sig,
                error=f"the elastic agent got {signal.Signals(sig).name} and stopped its workers",
            )
        if kind == "error":
            return Outcome(exit_code=1, error="elastic agent failed: " + self.explain())
        status = self.agent_status or 0
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return Outcome(
                exit_code=128 + sig,
                error=f"the elastic agent was killed by {signal.Signals(sig).name}",
            )
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
        return Outcome(
            exit_code=code or 1,
            error=f"the elastic agent exited with code {code} without a result",
        )


def run_elastic(
    plan: LaunchPlan,
    base_env: Mapping[str, str],
    reporter: Reporter,
    events: Events,
    inbox: Optional[SignalInbox] = None,
) -> Outcome:
    """Run this node's share of an elastic job to an Outcome (the contract's exit status).

    The same call and result as static mode's :func:`hpclaunch.spawner.run`, for a plan that
    carries an elastic setup. Worker output is not rank-prefixed or filtered here
    (``prefix_output``, ``ranks_filter``): the agent's workers write straight to the console,
    or to their per-rank logs. Raises UsageError/SpawnError (exit 2) before anything is
    spawned for a bad log dir or PID file, or a missing torch.
    """
    setup = plan.elastic
    if setup is None:
        raise ValueError("run_elastic needs a plan built with hpclaunch.plan(..., elastic=...)")
    require_torch()
    if plan.log_dir:
        logs.make_log_dir(plan.log_dir)  # a bad one is exit 2 before anything starts
    result_fd = -1
    files: Optional[WatchFiles] = None
    hellos: Optional[socket.socket] = None
    with launch_guard(plan.launch.pid_file, inbox) as guard:
        try:
            try:
                hellos = watch.listen(guard.token)
            except OSError as exc:
                reporter.debug(f"no record of elastic workers' starts and exits ({exc})")
            run = AgentRun(
                setup=setup,
                shutdown_timeout=shutdown_timeout(plan.launch.kill_timeout),
                debug=reporter.enabled(DEBUG),
                notify=watch.socket_name(guard.token) if hellos is not None else "",
            )
            reporter.info(plan.banner())
            env = dict(base_env)
            env[tree.TREE_TOKEN_VAR] = guard.token  # the workers inherit it: the watchdog's mark
            # torch's knob (read by its c10d rendezvous) for a fresh worker store per attempt.
            # By default the group-rank-0 agent keeps one store for the workers of every round
            # and attempt, unprefixed: a worker of a new attempt can read a peer's address or a
            # barrier count left by the previous one before the peer overwrites it, and then
            # fails to connect (a restart wasted) or hangs. Seen under load with restarts and
            # with a node leaving; a user's own setting wins.
            env.setdefault(SHARED_STORE_KNOB, "1")
            early = guard.inbox.drain()
            stop = next((s for s in early if s in FATAL_SIGNALS), None)
            if stop is not None:  # asked to stop before anything started
                guard.clean = True
                return Outcome(exit_code=128 + stop, fatal_signal=stop)
            files = WatchFiles(plan, env)
            run = run._replace(
                watch_env=tuple(files.worker_env(slot, env) for slot in range(len(plan.workers))),
                tracer=os.getpid() if plan.launch.stack_dumps else None,
            )
            try:
                agent, result_fd = fork_agent(plan, run, env, guard.inbox, guard.watchdog,
                                              reporter)
            except OSError as exc:  # fork: a process limit
                from hpclaunch.errors import SpawnError
                from hpclaunch.spawner.limits import fork_failure

                raise SpawnError(f"cannot start the elastic agent: {fork_failure(exc)}") from None
            guard.watchdog.track(agent)  # its own session: pgid == pid
            reporter.info(
                f"elastic: {setup.nproc_per_node} worker(s) here, {setup.min_nodes}..."
                f"{setup.max_nodes} node(s), rendezvous c10d at {setup.endpoint} "
                f"(run id {plan.world.run_id}), up to {setup.max_restarts} restart(s)"
            )
            supervisor = _ElasticSupervisor(
                plan, setup, reporter, guard.inbox, agent, result_fd, guard.helpers, events,
                files, hellos,
            )
            hellos = None  # the supervisor's now
            supervisor.handle_signals(early)  # SIGUSR1/2 that came first: said, not lost
            supervisor.loop()
            guard.clean = supervisor.finished()
            return supervisor.outcome()
        finally:
            if result_fd >= 0:
                os.close(result_fd)
            if hellos is not None:
                hellos.close()
            if files is not None:
                files.close()


def _rank_variables(pid: int) -> Optional[Tuple[int, int]]:
    """(RANK, LOCAL_RANK) from a worker's environment, or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            pairs = dict(item.partition(b"=")[::2] for item in handle.read().split(b"\0"))
        return int(pairs[b"RANK"]), int(pairs[b"LOCAL_RANK"])
    except (OSError, KeyError, ValueError):
        return None


__all__ = ["run_elastic"]
