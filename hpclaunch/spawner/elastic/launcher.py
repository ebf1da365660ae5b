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

import json
import os
import selectors
import signal
import sys
from typing import TYPE_CHECKING, AbstractSet, Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from hpclaunch import reporter
from hpclaunch.spawner import files, tree
from hpclaunch.spawner.elastic.config import (
    AGENT_GRACE_SECONDS,
    SHARED_STORE_KNOB,
    WORKER_SHIM,
    ElasticSetup,
    require_torch,
    shutdown_timeout,
    worker_config,
)
from hpclaunch.spawner.guard import launch_guard
from hpclaunch.spawner.inbox import (
    FATAL_SIGNALS,
    FORWARDED_SIGNALS,
    SignalInbox,
    fork_with_signals_blocked,
    reset_in_child,
)
from hpclaunch.spawner.loop import TreeSupervisor, note_sent
from hpclaunch.spawner.plan import LaunchPlan
from hpclaunch.spawner.report import Outcome, WorkerFailure
from hpclaunch.spawner.supervisor import MAX_FD

if TYPE_CHECKING:
    from hpclaunch.spawner import RunOptions


class AgentRun(NamedTuple):
    """What the forked agent is given besides the plan: decided by the launcher at run time."""

    setup: ElasticSetup
    #: torch's TERM -> KILL wait for its workers (``--kill_timeout``, whole seconds).
    shutdown_timeout: int
    #: Whether torch's agent logs at info level (the launcher's reporter is at debug).
    debug: bool


# --------------------------------------------------------------------------- the agent


def _agent_main(plan: LaunchPlan, run: AgentRun, result_fd: int) -> int:
    """Body of the forked agent process: run torch's elastic agent, report one JSON line."""

    import logging

    setup = run.setup

    def report(message: Dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        if len(data) > 60000:  # stay below the pipe's capacity: the write never blocks
            data = b'{"kind": "error", "message": "(the agent\'s report was too long)"}\n'
        os.write(result_fd, data)

    try:
        from torch.distributed.elastic.multiprocessing import (
            LogsDest,
            LogsSpecs,
            SignalException,
        )
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    except ImportError as exc:
        report({"kind": "error", "message": f"cannot import torch's elastic launcher: {exc}"})
        return 1

    class ConsoleLogs(LogsSpecs):
        """Workers inherit the launcher's stdout/stderr; elastic/worker.py does per-rank logs.

        torch's DefaultLogsSpecs would make a temp dir per run and open each log with
        ``open(path, "w")``: truncated on restart and followed through symlinks.
        """

        def __init__(self) -> None:
            super().__init__(log_dir=None)

        @property
        def root_log_dir(self) -> str:
            return ""

        def reify(self, envs: Dict[int, Dict[str, str]]) -> Any:
            ranks = range(len(envs))
            return LogsDest(
                stdouts={r: "" for r in ranks},
                stderrs={r: "" for r in ranks},
                tee_stdouts={},
                tee_stderrs={},
                error_files={r: "" for r in ranks},
            )

    class ToReporter(logging.Handler):
        """torch's agent log, as the launcher's debug messages (the one voice)."""

        def emit(self, record: logging.LogRecord) -> None:
            reporter.get().debug(f"agent: {record.getMessage()}")

    if run.debug:
        logging.basicConfig(level=logging.INFO, handlers=[ToReporter()])
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.INFO if run.debug else logging.WARNING)

    config = LaunchConfig(
        min_nodes=setup.min_nodes,
        max_nodes=setup.max_nodes,
        nproc_per_node=setup.nproc_per_node,
        logs_specs=ConsoleLogs(),
        run_id=plan.world.run_id,
        rdzv_endpoint=setup.endpoint,
        rdzv_backend="c10d",
        rdzv_configs=dict(setup.rendezvous_conf),
        max_restarts=setup.max_restarts,
        start_method="spawn",
        signals_to_handle="SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        shutdown_timeout=run.shutdown_timeout,
    )
    # Every argument goes through the agent's ``string.Template`` pass: escape our ``$``s.
    shim_config = worker_config(plan, os.getpid()).replace("$", "$$")
    args = ["-I", "-S", WORKER_SHIM.replace("$", "$$"), shim_config, "--", *setup.argv]
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        report({
            "kind": "failed", "rank": int(rank), "local_rank": int(failure.local_rank),
            "pid": int(failure.pid), "exitcode": int(failure.exitcode),
        })
        return 1
    except SignalException as exc:
        report({"kind": "signal", "signal": int(exc.sigval)})
        return 128 + int(exc.sigval)
    except Exception as exc:  # rendezvous timeout, store unreachable, ...
        # torch's C++ errors carry whole stack traces: the first lines say what happened.
        detail = "\n".join((str(exc) or str(exc.__cause__ or "")).splitlines()[:5])[:2000]
        report({"kind": "error", "type": type(exc).__name__, "message": detail})
        return 1
    report({"kind": "ok"})
    return 0


def _fork_agent(
    plan: LaunchPlan,
    run: AgentRun,
    env: Mapping[str, str],
    inbox: SignalInbox,
    watchdog: tree.Watchdog,
) -> Tuple[int, int]:
    """Fork the agent (own session, pdeathsig); returns (pid, read end of its result pipe)."""
    result_read, result_write = os.pipe()
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid, old_mask = fork_with_signals_blocked((result_read, result_write))
    if pid == 0:
        code = 1
        try:
            os.close(result_read)
            reset_in_child()
            for sig in FORWARDED_SIGNALS:
                # The launcher forwards these to the workers itself; one aimed at the whole
                # job (scancel --signal) must not kill the agent. A Python-level handler
                # (not SIG_IGN) so the workers, after exec, get the default action back.
                signal.signal(sig, _ignore_signal)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.setsid()
            tree.arm_death_signal()
            if os.getppid() != parent:
                os._exit(1)
            os.close(inbox.read_fd)
            os.close(inbox.write_fd)
            watchdog.close()  # the launcher's end only: EOF must mean "the launcher died"
            # Nothing of the launcher's (an MPI process manager's pipes, say) stays open in
            # the agent: it needs fds 0-2 and its result pipe, and its workers get 0-2 only.
            os.closerange(3, result_write)
            os.closerange(result_write + 1, MAX_FD)
            # The launcher's console (its non-blocking descriptors are closed just above)
            # is not the agent's: the agent speaks straight to fd 2, at the same level.
            voice = reporter.get()
            reporter.install(reporter.Reporter(voice.level, color=voice.color))
            os.environ.clear()
            os.environ.update(env)  # torch's agent gives workers os.environ plus its own
            code = _agent_main(plan, run, result_write)
        except BaseException as exc:  # noqa: B036 - must never return into the launcher
            try:
                reporter.get().emit(reporter.ERROR, [f"elastic agent crashed: {exc!r}"])
            except BaseException:  # noqa: B036 - not even a failed report may return
                pass
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(result_write)
    os.set_blocking(result_read, False)
    return pid, result_read


def _ignore_signal(signum: int, frame: object) -> None:
    """Python-level no-op handler (see _fork_agent)."""


# --------------------------------------------------------------------------- the launcher


class _ElasticSupervisor(TreeSupervisor):
    """The launcher's loop over one child (the agent) and any orphans it adopts."""

    def __init__(
        self,
        plan: LaunchPlan,
        setup: ElasticSetup,
        options: RunOptions,
        inbox: SignalInbox,
        agent: int,
        result_fd: int,
        helpers: AbstractSet[int] = frozenset(),
    ) -> None:
        super().__init__(inbox, options.kill_timeout, options.log, helpers)
        self.plan = plan
        self.setup = setup
        self.agent = agent
        self.result_fd = result_fd
        self.agent_status: Optional[int] = None
        self.result: Dict[str, Any] = {}
        self.buffer = b""
        self.selector.register(result_fd, selectors.EVENT_READ, self.on_result_readable)

    # ------------------------------------------------------------------ loop hooks

    def forward(self, sig: int) -> None:
        workers = self.workers()
        for pid in workers:
            tree.send(pid, sig)
        note_sent(sig, "worker(s)", workers)
        self.log(f"forwarded {signal.Signals(sig).name} to {len(workers)} worker(s)")

    def on_fatal(self, sig: int) -> None:
        self.fatal_signal = sig
        self.log(f"got {signal.Signals(sig).name}: stopping the elastic agent and its workers")

    def after_signals(self) -> None:
        self.read_result()
        self.reap()

    def on_child_exit(self, pid: int, status: int) -> None:
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

    def on_agent_exit(self) -> None:
        """The agent is gone, so are its workers; what they left behind (we adopted it) goes."""
        self.read_result()
        left = self.descendants()
        if not left or self.phase == self.KILLING:
            return
        if self.phase == self.RUNNING:
            self.leftovers = len(left)
            reporter.get().warning(
                f"the elastic agent is done but {len(left)} process(es) the workers started "
                "are still running: stopping them"
            )
            self.start_clock()
        for pid in left:
            tree.send(pid, signal.SIGTERM)
        note_sent(signal.SIGTERM, "process(es) the agent's workers left", left)

    def begin_terminate(self) -> None:
        """SIGTERM to the agent, which stops its workers (TERM, --kill_timeout, KILL).

        The workers are not signalled directly: the agent must see the signal before it sees
        a dead worker, or it would count a failure and start a new attempt.
        """
        if self.agent_status is None:
            self.start_clock(extra=AGENT_GRACE_SECONDS)
            tree.send(self.agent, signal.SIGTERM)
            note_sent(signal.SIGTERM, "elastic agent", [self.agent])
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
                f"the rendezvous at {endpoint} is closed: the job already ended on another node"
            ),
        }
        text = f"{kind}: {message}" if kind and message else kind or message
        return f"{text} ({hints[kind]})" if kind in hints else text

    def outcome(self) -> Outcome:
        """As static mode's; a failure that is not a worker's is explained in ``error``."""
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


def run_elastic(plan: LaunchPlan, options: RunOptions, base_env: Mapping[str, str]) -> Outcome:
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
        files.make_log_dir(plan.log_dir)  # a bad one is exit 2 before anything starts
    run = AgentRun(
        setup=setup,
        shutdown_timeout=shutdown_timeout(options.kill_timeout),
        debug=reporter.get().enabled(reporter.DEBUG),
    )
    result_fd = -1
    with launch_guard(options.pid_file) as guard:
        try:
            if options.banner:
                options.log(options.banner)
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
            agent, result_fd = _fork_agent(plan, run, env, guard.inbox, guard.watchdog)
            guard.watchdog.track(agent)  # its own session: pgid == pid
            options.log(
                f"elastic: {setup.nproc_per_node} worker(s) here, {setup.min_nodes}..."
                f"{setup.max_nodes} node(s), rendezvous c10d at {setup.endpoint} "
                f"(run id {plan.world.run_id}), up to {setup.max_restarts} restart(s)"
            )
            supervisor = _ElasticSupervisor(
                plan, setup, options, guard.inbox, agent, result_fd, guard.helpers
            )
            supervisor.handle_signals([])
            supervisor.loop()
            guard.clean = supervisor.finished()
            return supervisor.outcome()
        finally:
            if result_fd >= 0:
                os.close(result_fd)


__all__ = ["AgentRun", "run_elastic"]
