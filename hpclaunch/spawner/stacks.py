"""Every local rank's stack, with no code change in the script: taken in the workers, shown here.

How a stack is taken. Each worker's ``PYTHONPATH`` starts with ``worker_site/``, whose
``sitecustomize`` registers :mod:`faulthandler` on the dump signal
(:func:`~hpclaunch.spawner.hang.dump_signal`, a real-time one) before the script starts,
then takes itself out again (see that file). faulthandler's handler is C: it dumps every
thread also while the interpreter is deadlocked or stuck in a C call. It writes to the rank's
pipe (:class:`~hpclaunch.spawner.hang.DumpPipes`); :class:`StackDumper` reads it in the event
loop, puts each thread's frames innermost last (as a Python traceback reads) and writes them
rank-prefixed to the launcher's console and to the rank's log, one block per rank.

A process gets the dump signal only when ``/proc/<pid>/status`` shows a handler for it
(``SigCgt``): the default action of a real-time signal ends the process, so a worker that is
not Python (``--no_python``), started with ``-I``/``-S``, or still starting is never
signalled; it gets the process-state line only (state, kernel wait channel, threads, CPU
time), which alone tells a spinning rank from a sleeping one. When ``py-spy`` is installed
(the ``py-spy`` extra) the native frames are taken too, by ``py-spy dump --native``; workers
name the launcher as their tracer (``PR_SET_PTRACER``, in :mod:`hpclaunch.spawner.child`),
so this works under Yama's default ptrace scope without root.

Imported at the first dump (or with ``--stall_timeout``), never by a plain launch.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from hpclaunch.spawner import tree
from hpclaunch.spawner.hang import DumpPipes, dump_signal
from hpclaunch.spawner.logs import write_all

#: A rank's dump is complete once its pipe has been quiet this long...
DUMP_QUIET_SECONDS = 0.5
#: ...and given up on when nothing came this long after the signal (a process in D state).
DUMP_WAIT_SECONDS = 5.0
#: How long ``py-spy dump`` may take before it is killed.
PYSPY_WAIT_SECONDS = 20.0
#: A rank's dump text kept at most (faulthandler's own limits: 100 threads x 100 frames).
MAX_DUMP_BYTES = 4 << 20

#: /proc/<pid>/stat's state letters.
STATE_NAMES = {
    "R": "running",
    "S": "sleeping",
    "D": "in uninterruptible wait (disk or driver)",
    "T": "stopped",
    "t": "stopped by a tracer",
    "Z": "a zombie",
    "X": "dead",
    "I": "idle",
}


def has_dump_handler(pid: int, sig: int) -> bool:
    """Whether ``pid`` catches ``sig`` (``SigCgt``): only then may it be sent."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


# --------------------------------------------------------------------------- process state


class ProcessState(NamedTuple):
    """What /proc says about one process, for telling a spinning rank from a sleeping one."""

    state: str
    #: user + system CPU seconds since it started (all threads)
    cpu: float
    threads: int
    #: the kernel function it sleeps in ("" when running or not shown)
    wchan: str
    #: state letter -> how many of its threads are in it
    thread_states: Tuple[Tuple[str, int], ...]


def read_cpu(pid: int) -> Optional[float]:
    """CPU seconds ``pid`` has used (None when it is gone)."""
    fields = _stat_fields(f"/proc/{pid}/stat")
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_state(pid: int) -> Optional[ProcessState]:
    fields = _stat_fields(f"/proc/{pid}/stat")
    if fields is None:
        return None
    counts: Dict[str, int] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tasks = []
    for tid in tasks:
        task = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        if task is not None:
            counts[task[0]] = counts.get(task[0], 0) + 1
    try:
        with open(f"/proc/{pid}/wchan", "rb") as handle:
            wchan = handle.read().decode(errors="replace").strip()
    except OSError:
        wchan = ""
    return ProcessState(
        state=fields[0],
        cpu=(int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        threads=int(fields[17]),
        wchan="" if wchan == "0" else wchan,
        thread_states=tuple(sorted(counts.items(), key=lambda item: -item[1])),
    )


def _stat_fields(path: str) -> Optional[List[str]]:
    """:func:`hpclaunch.spawner.tree.stat_fields`, when it has every field read here."""
    fields = tree.stat_fields(path)
    return fields if fields is not None and len(fields) > 17 else None


def describe_state(
    state: Optional[ProcessState], since: Optional[Tuple[float, float]], now: float
) -> str:
    """``sleeping in do_select, 3 threads (2 sleeping, 1 running), 0.00 s CPU in the last
    2.5 s``; ``since`` is an earlier (time, CPU seconds) of the same process."""
    if state is None:
        return "gone"
    name = STATE_NAMES.get(state.state, state.state)
    words = [f"{name} in {state.wchan}" if state.wchan else name]
    threads = f"{state.threads} thread{'s' if state.threads != 1 else ''}"
    if state.threads > 1 and state.thread_states:
        shown = ", ".join(f"{n} {STATE_NAMES.get(s, s)}" for s, n in state.thread_states)
        threads += f" ({shown})"
    words.append(threads)
    if since is not None and now > since[0]:
        words.append(f"{state.cpu - since[1]:.2f} s CPU in the last {now - since[0]:.1f} s")
    else:
        words.append(f"{state.cpu:.2f} s CPU since it started")
    return ", ".join(words)


# --------------------------------------------------------------------------- formatting


def traceback_order(text: str) -> List[str]:
    """faulthandler's dump with each thread's frames innermost last, as tracebacks read.

    faulthandler writes ``Thread 0x... (most recent call first):`` then one
    ``  File "f.py", line 3 in func`` per frame, innermost first; ``  ...`` stands for the
    outer frames beyond its depth limit (so it goes first here). Other lines pass as they are.
    """
    import re

    frame = re.compile(r'^  File "(.*)", line (\S+) in (.*)$')
    out: List[str] = []
    frames: List[str] = []

    def close_thread() -> None:
        out.extend(reversed(frames))
        frames.clear()

    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("  "):
            match = frame.match(line)
            frames.append(
                f'  File "{match[1]}", line {match[2]}, in {match[3]}' if match else line
            )
            continue
        close_thread()
        out.append(line.replace("(most recent call first)", "(innermost frame last)"))
    close_thread()
    return out


def pyspy_order(text: str) -> List[str]:
    """``py-spy dump`` output with each thread's frames (indented lines) innermost last."""
    out: List[str] = []
    frames: List[str] = []
    for line in text.splitlines():
        if line.startswith(" ") and line.strip():
            frames.append(line)
            continue
        out.extend(reversed(frames))
        frames = []
        if line.strip():
            out.append(line)
    out.extend(reversed(frames))
    return out


# --------------------------------------------------------------------------- helpers


def find_pyspy() -> Optional[str]:
    """``py-spy`` beside this Python (a venv's bin) or on PATH; None when not installed."""
    import sys

    from hpclaunch.fast import which

    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(beside, os.X_OK):
        return beside
    return which("py-spy")


def start_helper(argv: Sequence[str], env: Mapping[str, str]) -> Tuple[int, int]:
    """Start a short-lived tool (py-spy, scancel) as the launcher's child; returns
    ``(pid, fd)``, ``fd`` the non-blocking read end of its stdout+stderr.

    Started as workers are (fork + :func:`~hpclaunch.spawner.child.become_worker`): its own
    session, dead with the launcher; reaped by the event loop like any child.
    """
    from hpclaunch.spawner.child import become_worker
    from hpclaunch.spawner.inbox import fork_with_signals_blocked, reset_in_child, set_mask

    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid, old_mask = fork_with_signals_blocked((read_end, write_end))
    if pid == 0:
        try:
            reset_in_child()
            set_mask(old_mask)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            become_worker(argv, env, parent, stdout_fd=write_end, stderr_fd=write_end,
                          new_session=True)
        except BaseException as exc:  # noqa: B036 - must never return into the launcher
            try:
                os.write(write_end, f"cannot start {argv[0]}: {exc}\n".encode(errors="replace"))
            finally:
                os._exit(127)
        os._exit(127)
    set_mask(old_mask)
    os.close(write_end)
    os.set_blocking(read_end, False)
    return pid, read_end


class HelperRun:
    """One helper's output, collected until it closes its end or its time is up."""

    def __init__(self, pid: int, fd: int, deadline: float,
                 done: Callable[[HelperRun], None]) -> None:
        self.pid = pid
        self.fd = fd
        self.deadline = deadline
        self.done = done
        self.output = bytearray()
        self.timed_out = False


# --------------------------------------------------------------------------- the dumps


class DumpTarget(NamedTuple):
    """A worker whose stack is wanted: its pipe (slot), rank, PID and where its log is."""

    slot: int
    rank: int
    pid: int
    log_fd: Optional[int] = None
    log_path: Optional[str] = None


class _Collection:
    """One rank's dump as it arrives on its pipe."""

    __slots__ = ("target", "header", "data", "sent_at", "last_byte", "dropped")

    def __init__(self, target: DumpTarget, header: str, sent_at: float) -> None:
        self.target = target
        self.header = header
        self.data = bytearray()
        self.sent_at = sent_at
        self.last_byte = 0.0
        self.dropped = 0


class StackDumper:
    """Asks workers for their stacks and shows what comes back, rank by rank.

    ``write`` takes whole lines for the launcher's console (the reporter's sink: in order
    with the workers' output, never blocking); ``prefix`` is a rank's console prefix;
    ``find`` the live worker of a slot (for a dump nobody here asked for: a worker signalled
    by hand); ``adopt`` tells the supervisor that a helper process (py-spy) is the
    launcher's own. Each rank's dump is written as one block once complete, so ranks'
    dumps never interleave.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        pipes: Optional[DumpPipes],
        write: Callable[[bytes], None],
        prefix: Callable[[int], str],
        find: Callable[[int], Optional[DumpTarget]],
        adopt: Callable[[int], None],
        env: Mapping[str, str],
    ) -> None:
        self.selector = selector
        self.pipes = pipes
        self.write = write
        self.prefix = prefix
        self.find = find
        self.adopt = adopt
        self.env = env
        self.signal = dump_signal()
        #: py-spy's path, looked up at the first dump (None: not installed)
        self.pyspy: Optional[str] = None
        self.pyspy_known = pipes is None
        self.open: Dict[int, _Collection] = {}  # slot -> dump arriving
        self.helpers: Dict[int, HelperRun] = {}  # fd -> py-spy run

    # ------------------------------------------------------------------ asking

    def request(
        self,
        reason: str,
        targets: Sequence[DumpTarget],
        since: Mapping[int, Tuple[float, float]],
    ) -> None:
        """Signal every target that has the handler; report the others at once.

        ``since``: pid -> (time, CPU seconds) of an earlier look (the CPU used since then is
        shown).
        """
        if not self.pyspy_known:
            self.pyspy, self.pyspy_known = find_pyspy(), True
        now = time.monotonic()
        for target in targets:
            state = read_state(target.pid)
            header = (
                f"hpclaunch: stack of rank {target.rank} (pid {target.pid}, {reason}): "
                f"{describe_state(state, since.get(target.pid), now)}"
            )
            if self.pipes is None:
                self._emit(target, [header, "hpclaunch: no stack taken (--no_stack_dumps)"])
            elif state is None or state.state in ("Z", "X"):
                self._emit(target, [header, "hpclaunch: no stack: the process has ended"])
            elif not has_dump_handler(target.pid, self.signal):
                self._emit(target, [header, "hpclaunch: no Python stack: the process has no "
                                    "dump handler (not Python, started with -I, -E or -S, "
                                    "or not yet at its script)"])
            elif target.slot not in self.open:
                self.open[target.slot] = _Collection(target, header, now)
                try:
                    os.kill(target.pid, self.signal)
                except ProcessLookupError:
                    pass  # it just ended: the wait below gives up on it

    @property
    def busy(self) -> bool:
        """A dump or a py-spy run is still under way."""
        return bool(self.open) or bool(self.helpers)

    # ------------------------------------------------------------------ reading

    def on_readable(self, fd: int) -> None:
        """A dump handler wrote to its pipe (asked here, or signalled by hand)."""
        assert self.pipes is not None
        slot = self.pipes.fds.index(fd)
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            collection = self.open.get(slot)
            if collection is None:
                found = self.find(slot)
                target = found or DumpTarget(slot=slot, rank=slot, pid=0)
                who = f"pid {found.pid}, " if found is not None else ""
                collection = _Collection(
                    target,
                    f"hpclaunch: stack of rank {target.rank} ({who}signalled directly)",
                    time.monotonic(),
                )
                self.open[slot] = collection
            room = MAX_DUMP_BYTES - len(collection.data)
            collection.data += data[: max(0, room)]
            collection.dropped += max(0, len(data) - max(0, room))
            collection.last_byte = time.monotonic()

    def on_helper_output(self, fd: int) -> None:
        run = self.helpers[fd]
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self._finish_helper(run)
                return
            run.output += data[: max(0, MAX_DUMP_BYTES - len(run.output))]

    # ------------------------------------------------------------------ time

    def next_timeout(self) -> Optional[float]:
        """Seconds until a dump may be complete or given up on (None: nothing under way)."""
        due = [c.last_byte + DUMP_QUIET_SECONDS if c.data else c.sent_at + DUMP_WAIT_SECONDS
               for c in self.open.values()]
        due.extend(run.deadline for run in self.helpers.values())
        return max(0.0, min(due) - time.monotonic()) if due else None

    def on_wake(self) -> None:
        """Write the dumps that are complete; give up on those that are overdue."""
        now = time.monotonic()
        for slot, collection in list(self.open.items()):
            if collection.data and now >= collection.last_byte + DUMP_QUIET_SECONDS:
                del self.open[slot]
                self._complete(collection)
            elif not collection.data and now >= collection.sent_at + DUMP_WAIT_SECONDS:
                del self.open[slot]
                self._emit(collection.target, [
                    collection.header,
                    f"hpclaunch: no stack came within {DUMP_WAIT_SECONDS:g} s of the signal "
                    "(a process in uninterruptible wait runs no handler)",
                ])
        for run in list(self.helpers.values()):
            if now >= run.deadline:
                run.timed_out = True
                try:
                    os.kill(run.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._finish_helper(run)

    # ------------------------------------------------------------------ writing

    def _complete(self, collection: _Collection) -> None:
        target = collection.target
        lines = [collection.header]
        lines.extend(traceback_order(collection.data.decode("utf-8", errors="replace")))
        if collection.dropped:
            lines.append(f"hpclaunch: {collection.dropped} more byte(s) of this dump dropped")
        self._emit(target, lines)
        if self.pyspy is not None and target.pid:
            self._start_pyspy(self.pyspy, target)

    def _start_pyspy(self, pyspy: str, target: DumpTarget) -> None:
        """Native frames too: ``py-spy dump --native``, shown when it is done."""
        argv = [pyspy, "dump", "--pid", str(target.pid), "--native"]
        try:
            pid, fd = start_helper(argv, self.env)
        except OSError as exc:
            self._emit(target, [f"hpclaunch: py-spy did not start: {exc}"])
            return
        self.adopt(pid)

        def done(run: HelperRun) -> None:
            text = run.output.decode("utf-8", errors="replace")
            head = (f"hpclaunch: native stack of rank {target.rank} (pid {target.pid}, "
                    "py-spy dump --native), innermost frame last:")
            tail = ([f"hpclaunch: py-spy took more than {PYSPY_WAIT_SECONDS:g} s: stopped"]
                    if run.timed_out else [])
            self._emit(target, [head, *pyspy_order(text), *tail])

        self.helpers[fd] = HelperRun(pid, fd, time.monotonic() + PYSPY_WAIT_SECONDS, done)
        self.selector.register(fd, selectors.EVENT_READ, self.on_helper_output)

    def _finish_helper(self, run: HelperRun) -> None:
        if self.helpers.pop(run.fd, None) is None:
            return
        self.selector.unregister(run.fd)
        os.close(run.fd)
        run.done(run)

    def _emit(self, target: DumpTarget, lines: Sequence[str]) -> None:
        """One block on the console (rank-prefixed) and in the rank's log."""
        prefix = self.prefix(target.rank)
        self.write("".join(f"{prefix}{line}\n" for line in lines).encode(errors="replace"))
        text = "".join(f"{line}\n" for line in lines).encode(errors="replace")
        if target.log_fd is not None:
            _write_all(target.log_fd, text)
        elif target.log_path is not None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(target.log_path, flags)
            except OSError:
                return
            try:
                _write_all(fd, text)
            finally:
                os.close(fd)

    def close(self) -> None:
        """The launch is over: whatever is still collected is written, helpers stopped."""
        for slot, collection in list(self.open.items()):
            del self.open[slot]
            if collection.data:
                self._complete_without_pyspy(collection)
        for run in list(self.helpers.values()):
            try:
                os.kill(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._finish_helper(run)

    def _complete_without_pyspy(self, collection: _Collection) -> None:
        pyspy, self.pyspy = self.pyspy, None
        try:
            self._complete(collection)
        finally:
            self.pyspy = pyspy


def _write_all(fd: int, data: bytes) -> None:
    """A dump to a log, best effort: a log the file system refuses loses it (the console
    has it)."""
    try:
        write_all(fd, data)
    except OSError:
        pass
