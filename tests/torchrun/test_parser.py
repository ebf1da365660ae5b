"""hpclaunch-torchrun's parser against torchrun's own (torch 2.13's ``get_args_parser``):
the same argv and ``PET_*`` give the same values for every flag, in both spellings.

torch's parser reads ``os.environ`` when it is built, so it runs in a child process with
each case's environment; ours is given the environment as a mapping.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Dict, List

import pytest

from hpclaunch.errors import UsageError
from hpclaunch.torchrun.parser import parse

pytestmark = pytest.mark.usefixtures("torch_available")

ORACLE = """
import json, os, sys
from torch.distributed.run import get_args_parser
out = []
for case in json.load(sys.stdin):
    os.environ.clear()
    os.environ.update(case["env"])
    args = get_args_parser().parse_args(case["argv"])
    out.append(vars(args))
print(json.dumps(out))
"""

#: Every torchrun 2.13 flag in each spelling, and PET_* for each that has one.
CASES: List[Dict[str, Any]] = [
    {"argv": ["t.py"], "env": {}},
    {"argv": ["--nnodes", "2", "--nproc-per-node", "4", "t.py", "--nnodes", "9"], "env": {}},
    {"argv": ["--nnodes=1:4", "--nproc_per_node=auto", "t.py"], "env": {}},
    {"argv": ["--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1", "--rdzv-id", "x",
              "--rdzv-conf", "join_timeout=5", "t.py"], "env": {}},
    {"argv": ["--rdzv_backend=c10d", "--rdzv_endpoint=h", "--rdzv_id=y",
              "--rdzv_conf=a=1", "t.py"], "env": {}},
    {"argv": ["--standalone", "--max-restarts", "3", "--monitor-interval", "0.5",
              "--start-method", "fork", "--event-log-handler", "console", "--role", "r",
              "t.py"], "env": {}},
    {"argv": ["--max_restarts=2", "--monitor_interval=1", "--start_method=forkserver",
              "--event_log_handler=x", "t.py"], "env": {}},
    {"argv": ["-m", "--no-python", "--run-path", "--log-dir", "/l", "-r", "3", "-t", "1",
              "--local-ranks-filter", "0,1", "t.py"], "env": {}},
    {"argv": ["--module", "--no_python", "--run_path", "--log_dir=/m", "--redirects=0:1",
              "--tee=2", "--local_ranks_filter=1", "t.py"], "env": {}},
    {"argv": ["--duplicate-stdout-filters", "a,b,,c", "--duplicate_stderr_filters=x",
              "t.py"], "env": {}},
    {"argv": ["--node-rank", "1", "--master-addr", "a", "--master-port", "5", "--local-addr",
              "b", "--logs-specs", "s", "--numa-binding", "node", "--signals-to-handle",
              "SIGUSR1", "--shutdown-timeout", "7", "--virtual-local-rank", "t.py"], "env": {}},
    {"argv": ["--node_rank=2", "--master_addr=c", "--master_port=6", "--local_addr=d",
              "--logs_specs=u", "--numa_binding=socket", "--signals_to_handle=SIGTERM",
              "--shutdown_timeout=8", "--virtual_local_rank", "t.py"], "env": {}},
    {"argv": ["t.py", "a", "--standalone"], "env": {  # PET_* only, every one of them
        "PET_NNODES": "3", "PET_NPROC_PER_NODE": "gpu", "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": "e:1", "PET_RDZV_ID": "i", "PET_RDZV_CONF": "k=v",
        "PET_STANDALONE": "1", "PET_MAX_RESTARTS": "4", "PET_MONITOR_INTERVAL": "2.5",
        "PET_START_METHOD": "fork", "PET_EVENT_LOG_HANDLER": "h", "PET_ROLE": "q",
        "PET_MODULE": "1", "PET_NO_PYTHON": "0", "PET_RUN_PATH": "1", "PET_LOG_DIR": "/p",
        "PET_REDIRECTS": "3", "PET_TEE": "2", "PET_LOCAL_RANKS_FILTER": "0",
        "PET_DUPLICATE_STDOUT_FILTERS": "o", "PET_DUPLICATE_STDERR_FILTERS": "e,f",
        "PET_NODE_RANK": "5", "PET_MASTER_ADDR": "m", "PET_MASTER_PORT": "77",
        "PET_LOCAL_ADDR": "l", "PET_SIGNALS_TO_HANDLE": "SIGINT", "PET_SHUTDOWN_TIMEOUT": "9",
        "PET_VIRTUAL_LOCAL_RANK": "1",
        "PET_LOGS_SPECS": "ignored: no env action", "PET_NUMA_BINDING": "ignored too"}},
    {"argv": ["--nnodes", "4", "--node-rank", "0", "t.py"],  # flags win over PET_*
     "env": {"PET_NNODES": "3", "PET_NODE_RANK": "5", "PET_MODULE": "0"}},
]


def test_every_flag_parses_as_torchrun_parses_it() -> None:
    result = subprocess.run([sys.executable, "-c", ORACLE], input=json.dumps(CASES),
                            capture_output=True, text=True, timeout=300, check=True)
    expected = json.loads(result.stdout.splitlines()[-1])
    for case, theirs in zip(CASES, expected):
        ours = vars(parse(case["argv"], case["env"]))
        assert ours.pop("dry_run") is False  # hpclaunch's one addition
        assert ours == theirs, case


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--nproc-per-node"], {}, "expected one argument"),
        (["t.py"], {"PET_STANDALONE": "yes"}, "PET_STANDALONE='yes': torchrun reads it as an"),
        (["t.py"], {"PET_MAX_RESTARTS": "x"}, "invalid int value: 'x'"),
        (["--start-method", "thread", "t.py"], {}, "invalid choice: 'thread'"),
        (["--numa-binding", "all", "t.py"], {}, "invalid choice: 'all'"),
        ([], {}, "the following arguments are required: training_script"),
    ],
)
def test_bad_command_lines_are_usage_errors(
    argv: List[str], env: Dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv, env)
