"""A supervisor whose child lives on another node: with restart backoff, the child is restarted
on the node once it is back (a new incarnation under the same name) and the supervisor lives on;
without it, restarts that die at once with "noconnection" exhaust it in milliseconds. And the
`node=` keyword of `nb.Child`, `GenServer.start_link`, `Supervisor.start_link` and
`DynamicSupervisor.start_link`, which start the process on that node and wait for its `init`
as locally."""

from __future__ import annotations

import logging

import pytest
from conftest import node_runtime
from dist_helpers import Announcer, RemoteWorker

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


async def test_a_child_with_node_is_restarted_there_after_its_node_restarts(nodes, caplog):
    caplog.set_level(logging.CRITICAL, logger="numbeam")
    b = await nodes("b")
    async with node_runtime():
        me = nb.self()
        child = nb.Child(Announcer, args=(me,), id="remote", node=b.name)
        sup = await nb.Supervisor.start_link([child], intensity=3, period=5.0, backoff=(0.05, 0.5))
        _, first, where = await nb.receive(lambda m: m[0] == "worker", timeout=T)
        assert where == b.name and first.node == b.name
        assert await nb.call(first, 1, timeout=T) == ("echo", 1, b.name)
        ref = nb.monitor(first)
        b.kill()
        await b.wait()
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "noconnection"
        b2 = await nodes(b.name)
        assert b2.name == b.name
        _, second, where = await nb.receive(lambda m: m[0] == "worker", timeout=T)
        assert where == b.name and second != first
        assert await nb.call(second, 2, timeout=T) == ("echo", 2, b.name)
        assert nb.is_alive(sup)
        await nb.stop(sup, timeout=T)


async def test_genserver_start_link_on_a_node(nodes):
    b = await nodes("b")
    async with node_runtime():
        pid = await Announcer.start_link(nb.self(), node=b.name, name="announcer")
        assert pid.node == b.name
        assert await nb.call(("announcer", b.name), "hi", timeout=T) == ("echo", "hi", b.name)
        with pytest.raises(nb.StartError, match="init refused") as err:
            await Announcer.start(nb.self(), node=b.name, fail=True)
        assert isinstance(err.value.reason, nb.RemoteError)
        with pytest.raises(TypeError, match="colour"):
            await Announcer.start_link(nb.self(), node=b.name, colour="red")
        nb.trap_exit(True)
        nb.exit(pid, "kill")
        msg = await nb.receive(lambda m: type(m) is nb.Exit and m.pid == pid, timeout=T)
        assert msg.reason == "killed"  # the link was made as for a local start_link


async def test_supervisors_on_a_node(nodes):
    b = await nodes("b")
    async with node_runtime():
        me = nb.self()
        sup = await nb.Supervisor.start_link([nb.Child(Announcer, args=(me,), id="a")], node=b.name)
        assert sup.node == b.name
        _, first, where = await nb.receive(lambda m: m[0] == "worker", timeout=T)
        assert where == b.name
        assert await nb.Supervisor.which_children(sup) == [("a", first, "worker")]
        second = await nb.Supervisor.start_child(sup, nb.Child(Announcer, args=(me,), id="b"))
        assert second.node == b.name
        assert (await nb.Supervisor.count_children(sup))["active"] == 2
        dyn = await nb.DynamicSupervisor.start_link(node=b.name)
        third = await nb.DynamicSupervisor.start_child(dyn, nb.Child(Announcer, args=(me,)))
        assert third.node == b.name
        assert await nb.call(third, 3, timeout=T) == ("echo", 3, b.name)
        await nb.stop(dyn, timeout=T)
        await nb.stop(sup, timeout=T)
