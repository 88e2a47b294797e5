"""Named remote sends and casts on their fast paths, remote call replies (issue 11)."""

from __future__ import annotations

import pytest
from conftest import node_runtime

import numbeam as nb

T = 20.0  # bound on every wait; a healthy run takes milliseconds


async def test_pid_named_sends_and_casts_keep_their_order_and_calls_reply_directly(nodes):
    b = await nodes("b")
    async with node_runtime():
        me = nb.self()
        pid = nb.spawn("dist_helpers:collect", me, 6, name="coll", node=b.name)
        nb.send(pid, 0)
        nb.send(("coll", b.name), 1)
        nb.cast(("coll", b.name), 2)  # any process gets a cast as ("$gen_cast", request)
        nb.send(pid, 3)
        nb.cast(("coll", b.name), (4, "four"))
        nb.send(("coll", b.name), 5)
        nb.cast(("nobody", b.name), "dropped silently, as in OTP")
        got = await nb.receive(timeout=T)
        assert got == ("collected", [0, 1, ("$gen_cast", 2), 3, ("$gen_cast", (4, "four")), 5])

        nb.spawn("dist_helpers:start_counter", me, "counter", 1, node=b.name)
        _, counter = await nb.receive(timeout=T)
        nb.send(me, "already here")
        with pytest.raises(TimeoutError):
            await nb.call(("counter", b.name), "slow", timeout=0.05)  # it never replies
        nb.cast(("counter", b.name), ("add", 1))
        assert await nb.call(counter, "get", timeout=T) == 2
        assert await nb.receive(timeout=0) == "already here"  # nothing else came in
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0)
