"""The console writer and the relay in-process, on real pipes and a real selector: memory
stays bounded while nobody reads the console (back-pressure reaches the worker's pipe), and
everything arrives, in order, once somebody does."""

from __future__ import annotations

import os
import selectors

from hpclaunch.spawner.output.console import CONSOLE_BUFFER, LAUNCHER, Console
from hpclaunch.spawner.output.relay import READ_SIZE, OutputRelay

LINE = b"y" * 99 + b"\n"


def fill(fd: int, data: bytes) -> int:
    """Write as much of ``data`` as the non-blocking pipe takes now."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


def test_a_stalled_console_stops_the_relay_and_bounds_memory() -> None:
    console_read, console_write = os.pipe()
    worker_read, worker_write = os.pipe()
    os.set_blocking(worker_write, False)
    os.set_blocking(console_read, False)
    selector = selectors.DefaultSelector()
    console = Console(console_write, console_write)
    console.attach(selector)
    relay = OutputRelay(selector, console)
    relay.add(worker_read, 0, b"[rank0]: ", 1)
    total = 4 * CONSOLE_BUFFER // len(LINE) * len(LINE)
    source = LINE * (total // len(LINE))
    sent = 0
    try:
        # Nobody reads the console: the worker writes until its own pipe is full.
        while True:
            took = fill(worker_write, source[sent : sent + (1 << 16)])
            sent += took
            events = selector.select(0)
            for key, _ in events:
                key.data(key.fd)
            queued = sum(sink.queued for sink in console._unique())
            assert queued <= CONSOLE_BUFFER + READ_SIZE + len(b"[rank0]: ") * (READ_SIZE // 100)
            if not took and not events:
                break
        assert relay.paused and sent < total  # back-pressure reached the worker
        # Now somebody reads: everything the worker wrote arrives, whole lines, in order.
        expected = (b"[rank0]: " + LINE) * (total // len(LINE))
        received = bytearray()
        for _ in range(200_000):  # hang guard
            try:
                received += os.read(console_read, 1 << 20)
            except BlockingIOError:
                pass
            if len(received) >= len(expected):
                break
            if worker_write != -1:
                sent += fill(worker_write, source[sent : sent + (1 << 16)])
                if sent == total:
                    os.close(worker_write)
                    worker_write = -1
            for key, _ in selector.select(0.01):
                key.data(key.fd)
        assert bytes(received) == expected
    finally:
        if worker_write != -1:
            os.close(worker_write)
        console.close()
        selector.close()
        os.close(console_read)
        os.close(console_write)


def test_a_launcher_message_ends_a_rank_s_unfinished_line() -> None:
    read_end, write_end = os.pipe()
    console = Console(write_end, write_end)
    try:
        owner = object()
        console.write(1, owner, b"[rank3]: ", b"epoch 1: ", True)
        console.message(b"hpclaunch: got SIGTERM\n")
        console.write(1, owner, b"[rank3]: ", b"done\n", False)
        console.close()
        assert os.read(read_end, 4096) == (
            b"[rank3]: epoch 1: \nhpclaunch: got SIGTERM\n[rank3]: done\n"
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert LAUNCHER is not owner


def test_a_console_whose_reader_is_gone_drops_output_without_raising() -> None:
    read_end, write_end = os.pipe()
    console = Console(write_end, write_end)
    os.close(read_end)
    try:
        console.message(b"hpclaunch: anyone there?\n")
        console.write(2, object(), b"[rank0]: ", b"x" * (1 << 20) + b"\n", False)
        assert console.sinks[1].broken and not console.full
    finally:
        console.close()
        os.close(write_end)
