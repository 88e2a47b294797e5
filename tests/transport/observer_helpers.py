"""Functions the observer's multi-node tests spawn on real nodes by module path."""

from __future__ import annotations

import numbeam as nb


async def report_nodes(report_to: nb.Pid) -> None:
    nb.send(report_to, ("nodes", nb.node(), sorted(nb.nodes())))


async def connect_to(report_to: nb.Pid, name: str) -> None:
    nb.send(report_to, ("connected", name, await nb.connect(name)))


async def register_and_wait(report_to: nb.Pid, name: str) -> None:
    nb.register(name, nb.self())
    nb.send(report_to, ("registered", nb.self()))
    await nb.receive(lambda m: False)


async def report_nodes_with(report_to: nb.Pid, peer: str) -> None:
    """`report_nodes` once this node's side of its connection to `peer` is up too: the node
    that connected sees the connection up a moment before the node it connected to."""
    await nb.connect(peer)
    await report_nodes(report_to)
