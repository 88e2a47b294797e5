"""A supervisor whose child lives on another node: with restart backoff, the child is restarted
on the node once it is back (a new incarnation under the same name) and the supervisor lives on;
without it, restarts that die at once with "noconnection" exhaust it in milliseconds."""

from __future__ import annotations

import logging

from conftest import node_runtime
from dist_helpers import RemoteWorker

import numbeam as nb

T = 20.0


async def test_a_remote_child_is_restarted_when_its_node_comes_back(nodes, caplog):
    caplog.set_level(logging.CRITICAL, logger="numbeam")
    b = await nodes("b")
    async with node_runtime():
        me = nb.self()
        child = nb.Child(RemoteWorker, args=(b.name, me), id="remote")
        sup = await nb.Supervisor.start_link([child], intensity=3, period=5.0, backoff=(0.05, 0.5))
        _, first, where = await nb.receive(lambda m: m[0] == "worker", timeout=T)
        assert where == b.name
        ref = nb.monitor(first)
        b.kill()
        await b.wait()
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "noconnection"
        # Restarts meanwhile die with "noconnection"; the backoff spaces them out.
        b2 = await nodes(b.name)  # the same name: a new incarnation
        assert b2.name == b.name
        _, second, where = await nb.receive(lambda m: m[0] == "worker", timeout=T)
        assert where == b.name and second != first
        assert nb.is_alive(sup)
        assert await nb.Supervisor.which_children(sup) == [("remote", second, "worker")]
        await nb.stop(sup, timeout=T)


async def test_without_backoff_a_lost_node_exhausts_the_supervisor(nodes, caplog):
    caplog.set_level(logging.CRITICAL, logger="numbeam")
    b = await nodes("b")
    async with node_runtime():
        nb.trap_exit(True)
        child = nb.Child(RemoteWorker, args=(b.name, nb.self()), id="remote")
        sup = await nb.Supervisor.start_link([child], intensity=3, period=5.0)
        await nb.receive(lambda m: type(m) is tuple and m[0] == "worker", timeout=T)
        b.kill()
        msg = await nb.receive(lambda m: type(m) is nb.Exit and m.pid == sup, timeout=T)
        assert msg.reason == "shutdown"
