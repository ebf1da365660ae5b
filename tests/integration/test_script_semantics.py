"""The dump hook changes nothing a script can see: the same script run under hpclaunch and
run directly (the argv hpclaunch runs, the same environment) reports the same start-up, down
to ``sys.path``, ``PYTHONPATH``, the environment's own ``sitecustomize``, pickling, spawned
multiprocessing children and subprocesses. The one difference allowed, and required: under
hpclaunch the rank's process catches the dump signal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.conftest import BIN, ROOT, run_launcher

SEMANTICS = str(BIN / "semantics.py")


def environment(tmp_path: Path, pythonpath: str) -> Dict[str, str]:
    """The test's environment with PYTHONPATH unset, empty, or naming a folder whose
    sitecustomize leaves a mark."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath == "user sitecustomize":
        site = tmp_path / "usersite"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import sys\nsys.user_site_marker = 'mine'\n")
        env["PYTHONPATH"] = str(site)
    elif pythonpath == "empty":
        env["PYTHONPATH"] = ""
    return env


@pytest.mark.parametrize("pythonpath", ["unset", "empty", "user sitecustomize"])
@pytest.mark.parametrize("how", ["script", "module"])
def test_the_script_sees_what_it_sees_without_hpclaunch(
    tmp_path: Path, pythonpath: str, how: str
) -> None:
    env = environment(tmp_path, pythonpath)
    target: List[str] = ["--module", "tests.bin.semantics"] if how == "module" else [SEMANTICS]
    direct: List[str] = ["-m", "tests.bin.semantics"] if how == "module" else [SEMANTICS]
    out = tmp_path / "report.json"  # one path for both runs: their argv must be the same
    result = run_launcher("--nproc_per_node", "1", *target, "--out", str(out), env=env,
                          cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    hooked = json.loads(out.read_text())
    out.unlink()
    done = subprocess.run([sys.executable, "-u", *direct, "--local_rank=0", "--out", str(out)],
                          env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plain = json.loads(out.read_text())
    assert (hooked.pop("hooked"), plain.pop("hooked")) == (True, False)
    assert hooked == plain
    # ...and what the two agree on is what the environment says.
    expected: Optional[str] = {"unset": None, "empty": ""}.get(pythonpath, env.get("PYTHONPATH"))
    assert hooked["pythonpath"] == expected
    # None of hpclaunch's own (the hook's) are left; inherited ones (a test run's mark) stay.
    assert hooked["hpclaunch_vars"] == sorted(k for k in env if k.startswith("HPCLAUNCH_"))
    assert hooked["spawned"]["hooked"] is False and hooked["spawned"]["point"] == [5, 6]
    assert hooked["pickled"] == ["__main__", "Point", 3, 4]
    assert hooked["fd_3_free"] is True
    if pythonpath == "user sitecustomize":
        assert hooked["site_marker"] == "mine"
        assert hooked["sitecustomize"] == str(tmp_path / "usersite" / "sitecustomize.py")
        assert hooked["subprocess"][2] == hooked["sitecustomize"]
