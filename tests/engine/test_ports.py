"""Port picking for cluster members and for tests that start `--processes N --metrics-port P`."""

from __future__ import annotations

import contextlib
import socket

from engine.runner import _free_ports
from engine.testing import free_port_block


def test_cluster_ports_are_distinct_and_skip_the_ports_to_avoid() -> None:
    for _ in range(20):
        earlier = frozenset(_free_ports(8))
        ports = _free_ports(8, avoid=earlier)
        assert len(set(ports)) == 8
        assert earlier.isdisjoint(ports)


def test_free_port_block_gives_n_consecutive_bindable_ports() -> None:
    base = free_port_block(3)
    with contextlib.ExitStack() as held:
        for port in (base, base + 1, base + 2):
            held.enter_context(socket.socket()).bind(("127.0.0.1", port))
