"""Hidden nodes (node option ``hidden=True``, what ``numbeam observer`` and ``remsh`` run as)
and the node up/down telemetry events, against real node processes."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import T, node_runtime

import numbeam as nb


async def nodes_of(node: str) -> list[str]:
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
        assert await nodes_of(c.name) == [b.name]
        assert sorted(nb.nodes()) == sorted([b.name, c.name])
        assert await nodes_of(b.name) == [c.name]


async def test_node_up_and_down_events(nodes: Any) -> None:
    b = await nodes("b")
    me = None

    def forward(event: Any, measurements: Any, metadata: Any) -> None:
        assert me is not None
        nb.send(me, (event[-1], measurements, metadata))

    async with node_runtime():
        me = nb.self()
        nb.telemetry.attach_many(
            "node-events", [("numbeam", "node", "up"), ("numbeam", "node", "down")], forward
        )
        try:
            assert await asyncio.wait_for(nb.connect(b.name), T)
            _, m, md = await nb.receive(lambda x: x[0] == "up", timeout=T)
            assert md == {"node": nb.node(), "peer": b.name}
            assert isinstance(m["system_time"], int)
            assert nb.disconnect(b.name)
            _, m, md = await nb.receive(lambda x: x[0] == "down", timeout=T)
            assert md == {"node": nb.node(), "peer": b.name, "reason": "disconnect"}
        finally:
            nb.telemetry.detach("node-events")
