"""Hidden nodes (node option ``hidden=True``, what ``numbeam observer`` and ``remsh`` run as),
against real node processes. (The node up/down telemetry events: test_observer.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import T, node_runtime

import numbeam as nb


async def nodes_of(node: str, *peer: str) -> list[str]:
    """`node`'s `nb.nodes()`; with `peer`, once its side of its connection to `peer` is up."""
    if peer:
        nb.spawn("observer_helpers:report_nodes_with", nb.self(), *peer, node=node)
    else:
        nb.spawn("observer_helpers:report_nodes", nb.self(), node=node)
    msg = await nb.receive(lambda m: m[:2] == ("nodes", node), timeout=T)
    return msg[2]  # type: ignore[no-any-return]


async def test_a_hidden_node_is_listed_by_nobody_and_introduced_to_nobody(nodes: Any) -> None:
    b = await nodes("b")
    c = await nodes("c")
    async with node_runtime("hid", hidden=True):
        assert await asyncio.wait_for(nb.connect(b.name), T)
        nb.spawn("observer_helpers:connect_to", nb.self(), c.name, node=b.name)
        assert await nb.receive(timeout=T) == ("connected", c.name, True)
        assert await nodes_of(b.name) == [c.name]  # not us
        assert nb.nodes() == [b.name]  # we did not meet c
        # Connecting to c ourselves works (a spawn there connects), and c does not list us.
        assert await nodes_of(c.name, b.name) == [b.name]
        assert sorted(nb.nodes()) == sorted([b.name, c.name])
        assert await nodes_of(b.name) == [c.name]
