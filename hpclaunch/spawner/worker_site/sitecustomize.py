"""hpclaunch's start-up hook for Python workers: a stack dump on a signal, nothing else changed.

hpclaunch puts this file's folder first on each worker's ``PYTHONPATH``, so Python's ``site``
imports it before the script starts; the script needs no import and no code change. It

1. registers :func:`faulthandler.register` on the real-time signal the launcher names in
   ``HPCLAUNCH_STACKS`` (``"<signum> <path>[ keep-empty]"``): a C-level handler, so every
   thread's stack is written also while the interpreter is deadlocked or stuck inside a C
   call. It writes to ``<path>``, the launcher's pipe for this rank
   (``/proc/<launcher>/fd/<n>``), where the launcher puts the frames in traceback order,
   prefixes them and copies them to the rank's log; when that cannot be opened, to stderr.
   ``chain`` stays off: chaining to the default action of a real-time signal would end the
   process after the dump;
2. takes itself out again: its folder leaves ``sys.path`` and ``PYTHONPATH`` (only that
   entry: a wrapper script may have added its own) and its variable leaves ``os.environ``,
   so the script and the processes it starts see their environment as without hpclaunch
   (``keep-empty``: the user's PYTHONPATH was set and empty, so it stays set);
3. imports the ``sitecustomize`` the environment has without hpclaunch (a distribution's,
   a virtualenv's, the user's), or, when there is none, ends as a missing one does, so
   ``site`` goes on silently and ``sys.modules`` holds no ``sitecustomize``.

Standard library only, no f-strings or annotations (any Python 3 a ``--no_python`` worker
starts imports it), and cheap: ``faulthandler`` is built in.
"""

import os
import sys


def _move_high(fd):
    # type: (int) -> int
    """The pipe on a high descriptor: the script's own first ``open`` still gets 3."""
    try:
        target = min(os.sysconf("SC_OPEN_MAX"), 1024) - 1
        if target > fd:
            os.dup2(fd, target, inheritable=False)
            os.close(fd)
            return target
    except (OSError, ValueError):
        pass
    return fd


def _register(signum, path):
    # type: (str, str) -> None
    import faulthandler

    target = 2
    if path:
        try:
            target = _move_high(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            target = 2  # /proc of the launcher not readable here: the dump goes to stderr
    faulthandler.register(int(signum), file=target, all_threads=True, chain=False)


def _take_out(keep_empty):
    # type: (bool) -> None
    """This folder gone from sys.path and PYTHONPATH, whatever else they hold."""
    here = os.path.dirname(__file__)
    if here in sys.path:
        sys.path.remove(here)
    sys.path_importer_cache.pop(here, None)
    value = os.environ.get("PYTHONPATH")
    if value is None:
        return
    entries = value.split(os.pathsep)
    if here in entries:
        entries.remove(here)
    if entries or keep_empty:
        os.environ["PYTHONPATH"] = os.pathsep.join(entries)
    else:
        del os.environ["PYTHONPATH"]


def _install():
    # type: () -> None
    fields = os.environ.pop("HPCLAUNCH_STACKS", "").split(" ")
    _take_out("keep-empty" in fields[2:])
    if len(fields) >= 2:
        try:
            _register(fields[0], fields[1])
        except Exception:  # noqa: BLE001 - a broken dump hook must never stop the script
            pass


_install()
# The environment's own sitecustomize, found now that this folder is off sys.path. When there
# is none, the ImportError (name "sitecustomize") leaves this import as a missing one would.
del sys.modules["sitecustomize"]
import sitecustomize  # noqa: E402,F401
