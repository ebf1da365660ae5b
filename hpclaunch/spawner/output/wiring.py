"""How each worker's stdout and stderr are wired: a pty or pipe to the relay.

:func:`spawn_with_output` gives each worker its stdout/stderr: one pipe for both when it
has a per-rank log (the relay writes the log, see :mod:`hpclaunch.spawner.output.ranklog`);
one pseudo-terminal per worker when the launcher's console is a terminal (so colour and live
progress bars stay on, ``isatty()`` is true, and stdout+stderr keep the order the rank wrote
them); one pipe for both streams when the launcher's stdout and stderr are the same file
(``>log 2>&1``, Slurm's default), so the kernel keeps the rank's order; a pipe per stream
otherwise. Ranks hidden by ``--ranks_filter`` still get a pipe: the relay keeps the end of
their output for the failure summary and shows none of it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Tuple

from hpclaunch.options import OutputOptions
from hpclaunch.spawner.logs import LogFile
from hpclaunch.spawner.output.console import same_file

if TYPE_CHECKING:
    from hpclaunch.model.plan import RankSpec
    from hpclaunch.spawner.output.relay import OutputRelay

#: Descriptors the launcher holds per relayed worker while it runs (separate stdout and
#: stderr pipes, or a pty per stream); the preflight fd budget multiplies by the workers.
FDS_PER_WORKER = 2


#: ``spawn_worker(spec, env, stdout_fd, stderr_fd) -> (pid, exec error)``
SpawnFn = Callable[
    ["RankSpec", Mapping[str, str], Optional[int], Optional[int]], Tuple[int, str]
]


class Layout:
    """How the launcher's own stdout/stderr look, decided once per launch."""

    def __init__(self) -> None:
        self.same_file = same_file(1, 2)
        self.tty = {fd: os.isatty(fd) for fd in (1, 2)}
        self._winsize: Dict[int, bytes] = {}

    def open_channel(self, fd: int) -> Tuple[int, int]:
        """(launcher's end, worker's end): a pty when ``fd`` is a terminal, else a pipe."""
        if not self.tty[fd]:
            return os.pipe()
        import fcntl
        import termios

        if fd not in self._winsize:
            try:
                self._winsize[fd] = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
            except OSError:
                self._winsize[fd] = b""
        leader, follower = os.openpty()
        try:
            attrs = termios.tcgetattr(follower)
            attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": the launcher's terminal does it
            termios.tcsetattr(follower, termios.TCSANOW, attrs)
            if self._winsize[fd]:
                fcntl.ioctl(follower, termios.TIOCSWINSZ, self._winsize[fd])
        except BaseException:
            os.close(leader)
            os.close(follower)
            raise
        return leader, follower


def worker_output_env(env: Mapping[str, str]) -> Mapping[str, str]:
    """``PYTHONUNBUFFERED=1`` (as ``srun -u``) unless the user set it: a worker's own
    Python children would otherwise hold their output in a block buffer on a pipe."""
    if "PYTHONUNBUFFERED" in env:
        return env
    return {**env, "PYTHONUNBUFFERED": "1"}


def spawn_with_output(
    spawn: SpawnFn,
    spec: RankSpec,
    env: Mapping[str, str],
    options: OutputOptions,
    prefix_output: bool,
    logs: Mapping[str, LogFile],
    layout: Layout,
    relay: OutputRelay,
) -> Tuple[int, str]:
    """Start one worker with its stdout/stderr wired as the module docstring says."""
    env = worker_output_env(env)
    log = logs[spec.log_path] if spec.log_path else None
    shown = options.shows(spec.rank)
    if shown and options.raw_output and log is None:
        return spawn(spec, env, None, None)
    prefix = f"[rank{spec.rank}]: ".encode() if prefix_output else b""
    # (launcher's end, worker's end, worker fds it becomes, console target or None)
    channels: List[Tuple[int, int, Tuple[int, ...], Optional[int]]] = []
    try:
        if log is not None or not shown:
            channels.append((*os.pipe(), (1, 2), None))
        elif layout.same_file:
            channels.append((*layout.open_channel(1), (1, 2), 1))
        else:
            channels.append((*layout.open_channel(1), (1,), 1))
            channels.append((*layout.open_channel(2), (2,), 2))
        out = next(c[1] for c in channels if 1 in c[2])
        err = next(c[1] for c in channels if 2 in c[2])
        pid, error = spawn(spec, env, out, err)
    except BaseException:
        for leader, follower, _, _ in channels:
            os.close(leader)
            os.close(follower)
        raise
    rank_log = None
    if log is not None:
        from hpclaunch.spawner.output.ranklog import RankLog

        rank_log = RankLog(log.fd, log.path)
    for leader, follower, _, target in channels:
        os.close(follower)
        relay.add(leader, spec.rank, prefix, target, rank_log)
    return pid, error
