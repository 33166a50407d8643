"""A loopback port for a server a test starts in another process (runserver, a private
PostgreSQL, the demo), which has to be told its port before it binds it.

A port from bind(("127.0.0.1", 0)) comes from the kernel's ephemeral range, where every
outgoing connection on the machine also takes its port: between our probe closing and
the server binding, a connection of the other xdist worker's could take it. So the port
is taken below that range, where nothing is handed out on its own, from a slice of its
own for each xdist worker, and checked free."""

from __future__ import annotations

import os
import random
import socket

SLICE = 500


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = max(1024, _ephemeral_low() - 8 * SLICE) + (int(worker) % 8 if worker.isdigit()
                                                       else 0) * SLICE
    candidates = list(range(first, first + SLICE))
    random.shuffle(candidates)  # two tests of one worker, one after the other
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {first}-{first + SLICE - 1}")
