"""nb.Serving across real nodes (``numbeam node`` OS processes): servings on two nodes started
from a third by name, concurrent requests spread over both by queue length, predict's
exception arriving as nb.RemoteError, the load moving to the survivor when a node dies, and
nb.Overloaded from a serving on another node."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import serving_helpers

import numbeam as nb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "transport"))
from cluster import COOKIE, start_node  # noqa: E402

T = 20.0
GROUP = ("numbeam.serving", "twice")


async def caller(parent: nb.Pid, i: int) -> None:
    try:
        row = await nb.serving.run("twice", np.full(4, float(i)), timeout=T)
        nb.send(parent, (i, "ok", row))
    except Exception as e:
        nb.send(parent, (i, "error", e))


async def call_all(n: int, first: int = 0) -> dict[int, tuple[str, Any]]:
    tags = set(range(first, first + n))
    for i in tags:
        nb.spawn(caller, nb.self(), i)
    got = {}
    for _ in tags:
        i, kind, value = await nb.receive(lambda m: type(m) is tuple and m[0] in tags, timeout=T)
        got[i] = (kind, value)
    return got


async def test_servings_on_two_nodes_share_the_load_and_survive_a_lost_node(tmp_path) -> None:
    b, c = await asyncio.gather(
        *(start_node(name, home=tmp_path, extra_args=("--path", str(HERE))) for name in ("b", "c"))
    )
    try:
        async with nb.Runtime(node="t@127.0.0.1:0", cookie=COOKIE):
            assert await nb.connect(b.name) and await nb.connect(c.name)
            ref, _ = nb.pg.monitor(GROUP)
            opts = {"name": "twice", "batch_size": 8, "batch_timeout": 0.01}
            pb = await nb.Serving.start(serving_helpers.predict, node=b.name, **opts)
            pc = await nb.Serving.start("serving_helpers:predict", node=c.name, **opts)
            assert pb.node == b.name and pc.node == c.name
            while sorted(map(str, nb.pg.members(GROUP))) != sorted(map(str, [pb, pc])):
                await nb.receive(lambda m: type(m) is nb.pg.Join and m.ref == ref, timeout=T)
            got = await call_all(200)
            assert all(
                kind == "ok" and row.tolist() == [2 * i] * 4 for i, (kind, row) in got.items()
            )
            served = [(await nb.serving.stats(p, timeout=T))["requests"] for p in (pb, pc)]
            assert sum(served) == 200 and min(served) > 0, served  # both took a share
            try:
                await nb.serving.run("twice", np.full(4, -1.0), timeout=T)
            except nb.RemoteError as e:
                assert e.type_name == "ArithmeticError" and "negative input" in e.message
            else:
                raise AssertionError("predict's exception did not reach the caller")
            # A lost node takes its serving out of the group; the other serves everything.
            c.kill()
            await c.wait()
            while nb.pg.members(GROUP) != [pb]:
                await nb.receive(lambda m: type(m) is nb.pg.Leave and m.ref == ref, timeout=T)
            got = await call_all(40, first=1000)
            assert all(kind == "ok" for kind, _ in got.values())
            assert (await nb.serving.stats(pb, timeout=T))["requests"] == served[0] + 40
            try:  # more inputs than max_queue (1024): refused at once, also from another node
                await nb.serving.run_batch("twice", [np.zeros(4)] * 1025, timeout=T)
            except nb.Overloaded as e:
                assert f"on {b.name}: 0 inputs wait (max_queue=1024), 1025 more refused" in str(e)
            else:
                raise AssertionError("no nb.Overloaded")
    finally:
        for node in (b, c):
            with contextlib.suppress(Exception):
                await node.stop()
            drain = getattr(node, "_drain", None)
            if drain is not None:
                drain.cancel()
                with contextlib.suppress(BaseException):
                    await drain
