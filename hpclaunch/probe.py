"""The few facts about this machine that adapters need, found without importing torch.

These do I/O (sysfs, sockets), so they live apart from the pure adapters' logic; adapters
take their results as plain values.
"""

from __future__ import annotations

# The C module, not ``socket``: socket.py's enum conversions (and its selectors import) cost
# ~8 ms of every launch's start-up, for one hostname and at most two binds.
import _socket
import os
from typing import Mapping, Optional, Tuple

from hpclaunch.world import is_decimal

#: The NVIDIA driver lists one directory per GPU here; reading it costs microseconds where
#: ``import torch; torch.cuda.device_count()`` costs seconds.
NVIDIA_PROC_DIR = "/proc/driver/nvidia/gpus"


def parse_gpu_list(value: str) -> Optional[Tuple[int, ...]]:
    """``"0,1,3"`` -> (0, 1, 3); ``""``/``NoDevFiles`` -> (); UUIDs or garbage -> None (unknown)."""
    value = value.strip()
    if value in ("", "NoDevFiles", "-1"):
        return ()
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not is_decimal(part):
            return None
        ids.append(int(part))
    if len(set(ids)) != len(ids):
        return None
    return tuple(ids)


def gpu_ids_from(value: str) -> Tuple[Tuple[int, ...], bool]:
    """A GPU variable's ids and whether they can be passed on; UUIDs give a count only."""
    parsed = parse_gpu_list(value)
    if parsed is not None:
        return parsed, True
    count = len([part for part in value.split(",") if part.strip()])
    return tuple(range(count)), False


def visible_gpus(env: Mapping[str, str]) -> Tuple[Tuple[int, ...], bool]:
    """GPU ids visible to this launcher, and whether they are real ids to pass on.

    ``CUDA_VISIBLE_DEVICES`` wins when it is a list of integers. When it holds UUIDs we know
    only the count: ids 0..n-1 are returned with ``False``, so workers inherit the variable
    unchanged instead of getting indices that would mean other devices.
    """
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return gpu_ids_from(cvd)
    try:
        count = len(os.listdir(NVIDIA_PROC_DIR))
    except OSError:
        count = 0
    return tuple(range(count)), True


def hostname() -> str:
    return str(_socket.gethostname())


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def free_port(host: str = "") -> int:
    """A port the kernel says is free now (bind to 0). Racy by nature, like torchrun's."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
    finally:
        sock.close()
