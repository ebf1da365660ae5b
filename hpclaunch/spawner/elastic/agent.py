"""Elastic mode's agent: a forked child of the launcher that runs torch's elastic agent.

It imports torch and calls ``torch.distributed.launcher.api.elastic_launch(LaunchConfig(...),
python)`` with a c10d rendezvous at ``master_addr:master_port`` and the world's run id.
Nothing private of torch is touched (DeepSpeed's elastic mode broke on torch 2.13 by
subclassing the agent). Each worker starts as :mod:`hpclaunch.spawner.elastic.worker`.
The agent reports its result to the launcher as one JSON line on a pipe.
"""

from __future__ import annotations

import json
import marshal
import math
import os
import signal
import sys
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from hpclaunch.model.elastic import AGENT_VARS, DERIVED_VARS, ElasticSetup
from hpclaunch.model.plan import LaunchPlan
from hpclaunch.reporter import ERROR, Reporter
from hpclaunch.spawner import child, tree
from hpclaunch.spawner.elastic.finish import close_when_finished
from hpclaunch.spawner.inbox import (
    DUMP_SIGNALS,
    FORWARDED_SIGNALS,
    SignalInbox,
    fork_with_signals_blocked,
    reset_in_child,
    set_mask,
)

#: See run_elastic: makes rank 0's worker host a new store for each attempt.
SHARED_STORE_KNOB = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"

WORKER_SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


def shutdown_timeout(kill_timeout: float) -> int:
    """torch's TERM -> KILL wait for workers, in whole seconds: ``--kill_timeout``, rounded up."""
    return int(math.ceil(kill_timeout))


def worker_config(plan: LaunchPlan, agent_pid: int, run: AgentRun) -> str:
    """worker.py's config: per local rank the plan's fixed variables (and the launcher's stack
    dump and heartbeat ones), cores and memory node, the per-rank log's name around the rank
    (known only after each rendezvous), who may ptrace the worker, and the launcher's socket
    each worker says hello to (:mod:`hpclaunch.spawner.elastic.watch`)."""
    ranks = []
    for local_rank, spec in enumerate(plan.workers):
        env = {k: v for k, v in spec.env if k not in AGENT_VARS and k not in DERIVED_VARS}
        if local_rank < len(run.watch_env):
            env.update(run.watch_env[local_rank])
        ranks.append({"env": env, "cpus": list(spec.cpus) if spec.cpus is not None else None,
                      "mem_node": spec.mem_node})
    config: Dict[str, Any] = {"agent": agent_pid, "ranks": ranks,
                              "log_path": plan.log_path_parts(), "tracer": run.tracer}
    if run.notify:
        config["notify"] = run.notify
    return shim_argument(config)


def shim_argument(config: Mapping[str, Any]) -> str:
    """worker.py's CONFIG argument: ``config`` marshalled and hex-encoded.

    marshal, not JSON: the shim runs this very interpreter (``sys.executable``), so the
    format matches, and marshal is built in, where importing json (re, enum, its C scanner)
    was most of the shim's own start-up, paid by every worker of every round. Hex: argv is
    text, and has no ``$`` for the agent's template pass.
    """
    return marshal.dumps(dict(config)).hex()


class AgentRun(NamedTuple):
    """What the forked agent is given besides the plan: decided by the launcher at run time."""

    setup: ElasticSetup
    #: torch's TERM -> KILL wait for its workers (``--kill_timeout``, whole seconds).
    shutdown_timeout: int
    #: Whether torch's agent logs at info level (the launcher's reporter is at debug).
    debug: bool
    #: Per local rank, the variables of its stack-dump pipe and heartbeat file.
    watch_env: Tuple[Mapping[str, str], ...] = ()
    #: The PID allowed to ptrace the workers (the launcher: py-spy), or None.
    tracer: Optional[int] = None
    #: The abstract socket the workers say hello to ("": none).
    notify: str = ""


# --------------------------------------------------------------------------- the agent


def _agent_main(plan: LaunchPlan, run: AgentRun, result_fd: int, voice: Reporter) -> int:
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
            voice.debug(f"agent: {record.getMessage()}")

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
        # Not SIGQUIT: that asks for stacks (the launcher's), never ends the job.
        signals_to_handle="SIGTERM,SIGINT,SIGHUP",
        shutdown_timeout=run.shutdown_timeout,
        role=setup.role,
        local_addr=setup.local_addr,
    )
    close_when_finished(config, voice)  # a finished node never leaves a restart waiting
    # Every argument goes through the agent's ``string.Template`` pass: escape our ``$``s.
    shim_config = worker_config(plan, os.getpid(), run).replace("$", "$$")
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


def fork_agent(
    plan: LaunchPlan,
    run: AgentRun,
    env: Mapping[str, str],
    inbox: SignalInbox,
    watchdog: tree.Watchdog,
    reporter: Reporter,
) -> Tuple[int, int]:
    """Fork the agent (own session, pdeathsig); returns (pid, read end of its result pipe)."""
    result_read, result_write = os.pipe()
    parent = os.getpid()
    flush_standard_streams()
    pid, old_mask = fork_with_signals_blocked((result_read, result_write))
    if pid == 0:
        code = 1
        # The launcher's console (its non-blocking descriptors are closed below) is not the
        # agent's: the agent speaks straight to fd 2, at the same level.
        voice = Reporter(reporter.level, color=reporter.color)
        try:
            os.close(result_read)
            reset_in_child()
            for sig in FORWARDED_SIGNALS + DUMP_SIGNALS:
                # The launcher forwards these to the workers itself (or dumps their stacks);
                # one aimed at the whole job (scancel --signal) must not kill the agent. A
                # Python-level handler (not SIG_IGN) so the workers, after exec, get the
                # default action back.
                signal.signal(sig, _ignore_signal)
            set_mask(old_mask)
            os.setsid()
            child.arm_death_signal()
            if os.getppid() != parent:
                os._exit(1)
            os.close(inbox.read_fd)
            os.close(inbox.write_fd)
            watchdog.close()  # the launcher's end only: EOF must mean "the launcher died"
            # Nothing of the launcher's (an MPI process manager's pipes, say) stays open in
            # the agent: it needs fds 0-2 and its result pipe, and its workers get 0-2 only.
            os.closerange(3, result_write)
            os.closerange(result_write + 1, child.MAX_FD)
            os.environ.clear()
            os.environ.update(env)  # torch's agent gives workers os.environ plus its own
            code = _agent_main(plan, run, result_write, voice)
        except BaseException as exc:  # noqa: B036 - must never return into the launcher
            try:
                voice.emit(ERROR, [f"elastic agent crashed: {exc!r}"])
            except BaseException:  # noqa: B036 - not even a failed report may return
                pass
        finally:
            flush_standard_streams()
            os._exit(code)
    set_mask(old_mask)
    os.close(result_write)
    os.set_blocking(result_read, False)
    return pid, result_read


def flush_standard_streams() -> None:
    """Flush Python's stdout and stderr around a fork (nothing buffered is written twice).

    Either is None when its fd was closed when Python started (``>&-``, ``2>&-``) and may
    be broken (``| head -1``): that costs output, never the launch or the agent's exit.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


def _ignore_signal(signum: int, frame: object) -> None:
    """Python-level no-op handler (see _fork_agent)."""
