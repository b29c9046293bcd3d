"""Ports for the embedded stack's services: never one the kernel may give a connection's local
end meanwhile (that collision once failed the whole session stack), never the same one twice."""

from __future__ import annotations

import socket

from cli.processes import _outgoing_ports_start, free_port


def test_ports_are_below_the_outgoing_range_distinct_and_free() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(p < _outgoing_ports_start() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # nothing holds it
